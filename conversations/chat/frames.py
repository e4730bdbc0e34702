"""What travels to the browser: messages rendered by the page's own templates, a reply's
snapshot and status, the whole active branch. Rendering runs the ORM: call these in a thread.
Sending them is conversations/delivery/groups.py's.
"""

from django.db import models
from django.template.loader import render_to_string

from conversations.chat.markdown import store_rendered
from conversations.models import Message, tree


def utf16_length(text):
    """Length as the browser counts it (UTF-16 code units): chunk offsets use this unit."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def message_frame(message, text=None, reasoning=None):
    """A whole message rendered by the same template the page uses (runs the ORM: call it in a thread)."""
    if text is not None:
        message.content = text
    if reasoning is not None:
        message.reasoning = reasoning
    return message_frames([message])[0]


def message_frames(messages):
    """Several messages of one conversation as frames, their siblings read in one query."""
    if not messages:
        return []
    parents = {message.parent_id for message in messages}
    nulls = models.Q(parent__isnull=True) if None in parents else models.Q(pk__in=[])
    siblings = Message.objects.filter(
        models.Q(parent_id__in=parents - {None}) | nulls, conversation_id=messages[0].conversation_id
    )
    tree.annotate_siblings(messages, list(siblings))
    store_rendered(messages)  # a reply that just finished: its markdown is rendered here, once
    return [
        {
            "type": "message",
            "message_id": message.pk,
            "status": message.status,
            "html": render_to_string("conversations/_message.html", {"message": message}),
        }
        for message in messages
    ]


def snapshot_frame(message, text, reasoning=""):
    """A reply being written, as far as it goes (its answer and its reasoning): a new watcher's starting
    point for the chunks of each."""
    return {
        **message_frame(message, text, reasoning),
        "offset": utf16_length(text),
        "reasoning_offset": utf16_length(reasoning),
    }


def status_frame(message_id, text):
    """What a reply waits for before its first chunk, for its page to show in place of "writing…";
    the first chunk (or the final message) ends it. Sent again every so often while the wait lasts."""
    return {"type": "status", "message_id": message_id, "text": text}


def loading_text(model_name, seconds, progress=""):
    """A reply's status while its model loads: "loading chitchat… 3 s, loading weights"."""
    return f"loading {model_name}… {seconds:.0f} s" + (f", {progress}" if progress else "")


def path_frame(conversation):
    """The active branch as a page shows it (its newest messages), rendered, for watchers to redraw after a
    branch change or a lost socket."""
    conversation.refresh_from_db(fields=["leaf"])
    messages, earlier = conversation.path_window()
    html = render_to_string("conversations/_path.html", {"messages_list": messages, "earlier": earlier})
    return {"type": "path", "html": html}
