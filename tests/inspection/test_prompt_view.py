"""The exact prompt: each reply keeps the prompt its model got (chat template applied, oldest messages
left out to fit), with the template's hash; its owner sees it; an adapter trained on another chat
template is flagged on the reply and in the admin."""

import hashlib
import html
import http.server
import json

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse
from transformers import AutoTokenizer

from conversations.models import Conversation, Message
from modelhub import api
from modelhub.models import Adapter, ModelSpec
from modelhub.options import Usage
from modelhub.prompts import template_hash
from tests.adapters import make_tiny_adapter
from tests.factories import add_reply
from tests.live import http_server
from tests.markup import INLINE
from tests.sockets import frames_until, open_socket, scripted


def sha16(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prompt_url(reply):
    return reverse("conversations:prompt", args=[reply.conversation_id, reply.pk])


async def ask(user, conversation, content):
    """Send one message on a socket; the saved reply and its `done` frame."""
    socket, connected, _ = await open_socket(user, conversation)
    assert connected
    await socket.send_json_to({"type": "send", "content": content})
    frames = await frames_until(socket, "done", timeout=60)
    await socket.disconnect()
    reply = await Message.objects.aget(pk=frames[-1]["message_id"])
    return reply, frames[-1]


@sync_to_async
def sent_history(reply):
    """The messages the reply answered: the conversation up to its question."""
    return reply.conversation.history(upto=reply.parent)


# --- what is recorded ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_reply_keeps_the_chat_template_text_its_model_got_and_the_templates_hash(
    owner, tiny_spec, tiny_model_dir
):
    tiny_spec.system_prompt, tiny_spec.max_new_tokens = "You are terse.", 8
    await tiny_spec.asave()
    conversation = await Conversation.objects.acreate(owner=owner, model=tiny_spec)

    reply, _ = await ask(owner, conversation, "hello there, how are you?")

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    history = await sent_history(reply)
    assert [m["role"] for m in history] == ["system", "user"]
    assert reply.prompt == tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert reply.prompt_template_hash == sha16(tokenizer.chat_template) == template_hash(tokenizer)
    assert reply.prompt_left_out == 0
    assert reply.prompt_tokens == len(tokenizer(reply.prompt, add_special_tokens=False)["input_ids"])


@pytest.mark.django_db(transaction=True)
async def test_a_history_too_long_for_the_context_keeps_the_prompt_without_its_oldest_messages(
    owner, tiny_spec, tiny_model_dir
):
    tiny_spec.context_length, tiny_spec.max_new_tokens = 96, 16
    await tiny_spec.asave()

    @sync_to_async
    def long_conversation():
        conversation = Conversation.objects.create(owner=owner, model=tiny_spec)
        for i in range(12):
            conversation.add_user_message(f"question {i} about hiking and books")
            add_reply(conversation, f"answer {i} about the weekend", spec=tiny_spec)
        return conversation

    conversation = await long_conversation()
    reply, done = await ask(owner, conversation, "and the last question?")

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    history = await sent_history(reply)
    left_out = reply.prompt_left_out
    assert 0 < left_out < len(history) - 1
    assert reply.prompt == tokenizer.apply_chat_template(history[left_out:], tokenize=False, add_generation_prompt=True)
    assert "question 0 about" not in reply.prompt and "and the last question?" in reply.prompt
    assert f"The {left_out} oldest message(s) did not fit" in done["html"]


@pytest.mark.django_db(transaction=True)
async def test_a_model_that_renders_no_template_here_keeps_the_messages_it_was_sent(owner, conversation):
    await scripted(["fine"])

    reply, _ = await ask(owner, conversation, "hi")

    assert json.loads(reply.prompt) == [{"role": "user", "content": "hi"}]
    assert reply.prompt_template_hash == ""


class _Completions(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that answers every chat completion with "ok", streamed."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        events = [{"choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}]}, "[DONE]"]
        body = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def completions_server():
    with http_server(_Completions) as url:
        yield url


def test_a_remote_server_renders_its_own_template_so_the_messages_sent_are_kept(db, completions_server):
    spec = ModelSpec.objects.create(name="remote", backend=ModelSpec.Backend.REMOTE, server_url=completions_server)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo"}]
    request = api.start(spec, messages, {"max_new_tokens": 8})

    assert "".join(request) == "ok"
    assert json.loads(request.usage.prompt_text) == messages and "héllo" in request.usage.prompt_text
    assert request.usage.template_hash == ""


def test_user_messages_keep_no_prompt(conversation):
    question = conversation.add_user_message("hi")
    reply = add_reply(conversation, "hello", prompt_text="<user>hi</user>", template_hash="abc")
    question.refresh_from_db()
    assert (question.prompt, reply.prompt, reply.prompt_template_hash) == ("", "<user>hi</user>", "abc")


# --- who sees it -------------------------------------------------------------------------


@pytest.fixture
def answered(conversation):
    conversation.add_user_message("hi <b>there</b>")
    return add_reply(
        conversation,
        "hello",
        prompt_text="<|user|>hi <b>there</b><|assistant|>",
        template_hash="0123456789abcdef",
        truncated_messages=3,
    )


def test_the_owner_sees_the_prompt_its_hash_and_what_was_left_out(owner_client, answered):
    response = owner_client.get(prompt_url(answered))

    assert response.status_code == 200
    page = response.content.decode()
    assert '<pre class="prompt-text">&lt;|user|&gt;hi &lt;b&gt;there&lt;/b&gt;&lt;|assistant|&gt;</pre>' in page
    assert "0123456789abcdef" in page
    assert "3 oldest messages left out to fit the context." in page
    assert "<main" in page and [what for what, pattern in INLINE.items() if pattern.search(page)] == []


def test_htmx_gets_the_prompt_as_a_fragment_of_the_same_template(owner_client, answered):
    response = owner_client.get(prompt_url(answered), headers={"HX-Request": "true"})

    page = response.content.decode()
    assert response.status_code == 200 and page.lstrip().startswith('<details class="message-prompt" open>')
    assert "0123456789abcdef" in page and "<main" not in page


def test_the_chat_page_links_each_answer_to_its_prompt(owner_client, answered):
    page = owner_client.get(answered.conversation.get_absolute_url()).content.decode()
    assert f'hx-get="{prompt_url(answered)}"' in page and f'id="prompt-{answered.pk}"' in page


def test_another_user_gets_404_for_the_prompt(client, other_user, answered):
    client.force_login(other_user)
    assert client.get(prompt_url(answered)).status_code == 404


def test_a_question_has_no_prompt_page(owner_client, answered):
    assert owner_client.get(prompt_url(answered.parent)).status_code == 404


def test_a_remote_prompt_says_the_server_applied_its_own_template(owner_client, conversation):
    conversation.add_user_message("hi")
    reply = add_reply(conversation, "hello", prompt_text='[{"role": "user", "content": "hi"}]')
    page = owner_client.get(prompt_url(reply)).content.decode()
    assert "applies its own chat template" in page and "these are the messages it sent" in page


# --- an adapter's template --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("trained_with", ["the same template", "another template"])
async def test_a_reply_from_an_adapter_trained_on_another_template_says_so(
    owner, tiny_spec, tiny_model_dir, tmp_path, trained_with
):
    served = sha16(AutoTokenizer.from_pretrained(tiny_model_dir).chat_template)
    recorded = served if trained_with == "the same template" else sha16("{{ messages }}")
    folder = await sync_to_async(make_tiny_adapter)(tiny_model_dir, tmp_path / "style", seed=1)
    tiny_spec.max_new_tokens = 4
    await tiny_spec.asave()
    adapter = await Adapter.objects.acreate(name="style", base=tiny_spec, path=str(folder), template_hash=recorded)
    conversation = await Conversation.objects.acreate(owner=owner, model=tiny_spec, adapter=adapter)

    reply, done = await ask(owner, conversation, "hello there")

    assert reply.adapter_name == "style" and reply.prompt_template_hash == served
    mismatch = f"Adapter style was trained with chat template {recorded}, but this reply's prompt used {served}."
    if trained_with == "the same template":
        assert reply.notice == "" and "was trained with chat template" not in done["html"]
    else:
        assert reply.notice == mismatch and mismatch in html.unescape(done["html"])


def test_an_adapter_registered_by_hand_is_never_flagged(tiny_spec):
    adapter = Adapter.objects.create(name="hand", base=tiny_spec, path="/adapters/hand")
    assert adapter.template_hash == "" and not adapter.template_differs("0123456789abcdef")
    assert adapter.template_check("0123456789abcdef") == "unknown (not recorded)"


def test_the_admins_adapter_list_says_whether_the_base_template_still_matches(client, staff, tiny_spec, tiny_model_dir):
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="modelhub"))
    client.force_login(staff)
    served = sha16(AutoTokenizer.from_pretrained(tiny_model_dir).chat_template)
    Adapter.objects.create(name="same", base=tiny_spec, path="/a/same", template_hash=served)
    Adapter.objects.create(name="other", base=tiny_spec, path="/a/other", template_hash="fedcba9876543210")

    page = client.get(reverse("admin:modelhub_adapter_changelist")).content.decode()

    assert '<td class="field-template_check">matches</td>' in page
    assert f"differs: trained with fedcba9876543210, base now {served}" in page
    assert tiny_spec.served_template_hash() == served
    tiny_spec.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"  # an override wins
    assert tiny_spec.served_template_hash() == sha16(tiny_spec.chat_template)


def test_the_prompt_page_says_when_the_adapter_learnt_another_template(owner_client, conversation, tiny_spec):
    adapter = Adapter.objects.create(name="style", base=tiny_spec, path="/a/style", template_hash="fedcba9876543210")
    conversation.add_user_message("hi")
    reply = conversation.start_reply(tiny_spec, {}, adapter)
    reply.finish("complete", "hello", usage=Usage(prompt_text="<user>hi", template_hash="0123456789abcdef"))

    page = owner_client.get(prompt_url(reply)).content.decode()

    assert "Adapter style:" in page
    assert "trained with chat template <code>fedcba9876543210</code>, not the one of this prompt." in page
