"""The exact prompt of a reply: what it earns on the reply (a notice when history was left out,
or when its adapter learnt another chat template), and the owner's page showing it.

modelhub records the prompt as the model got it (`Usage.prompt_text`, `template_hash`,
`truncated_messages`: modelhub/prompts.py); `Message.finish` stores it on the reply.
"""

from django.shortcuts import render
from django.views.decorators.http import require_GET

from conversations.access.permissions import chat_required, reply_for
from conversations.models import Message
from modelhub.models import Adapter

NOT_RENDERED = (
    "This model's server applies its own chat template, so chatsite cannot show the prompt "
    "as the model got it: these are the messages it sent."
)


def reply_notice(usage, adapter=None):
    """What the reply says about its prompt: history left out, an adapter trained on another template."""
    notices = []
    if usage.truncated_messages:
        notices.append(
            f"The {usage.truncated_messages} oldest message(s) did not fit the model's context "
            "window and were left out of this reply's prompt."
        )
    if adapter is not None and adapter.template_differs(usage.template_hash):
        notices.append(template_mismatch(adapter.name, adapter.template_hash, usage.template_hash))
    return " ".join(notices)[: Message._meta.get_field("notice").max_length]


def template_mismatch(adapter_name, trained_hash, served_hash):
    return (
        f"Adapter {adapter_name} was trained with chat template {trained_hash}, "
        f"but this reply's prompt used {served_hash}."
    )


@chat_required
@require_GET
def message_prompt(request, pk, message_id):
    """The prompt an answer of this user's conversation got (404 for anyone else's); a fragment for htmx."""
    conversation, message = reply_for(request, pk, message_id)
    adapter = None
    if message.adapter_name:
        adapter = Adapter.objects.filter(base__name=message.model_name, name=message.adapter_name).first()
    context = {
        "conversation": conversation,
        "message": message,
        "not_rendered": NOT_RENDERED if message.prompt and not message.prompt_template_hash else "",
        "adapter": adapter,
        "template_differs": adapter is not None and adapter.template_differs(message.prompt_template_hash),
    }
    template = "conversations/prompt.html#prompt" if request.htmx else "conversations/prompt.html"
    return render(request, template, context)
