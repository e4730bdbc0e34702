"""What travels to the browser and between processes: rendered frames, groups, errors.

Every open socket of a conversation joins `group_for(id)` and forwards its `chat.frame`
messages; every process writing a reply in it joins `writers_for(id)` (inbox.py) and hears
stop and sync requests there, from whichever process the asking socket lives in.

Publishing is best effort: a channel layer that is down (Redis restarting) costs the
watchers some frames, never the reply. Pages that missed frames catch up from a
`path` frame and the writer's snapshot when their socket comes back (`sync`).
"""

import logging
import time

from channels.layers import get_channel_layer
from django.db import models
from django.template.loader import render_to_string

from conversations import tree
from conversations.models import Message

log = logging.getLogger(__name__)


class ChatError(Exception):
    """A user-facing refusal: becomes one error frame {"type": "error", "code", "message"}."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def frame(self):
        return {"type": "error", "code": self.code, "message": self.message}


class SessionEnded(ChatError):
    """The socket's login session is over (logged out, account disabled, password changed)."""

    close_code = 4401

    def __init__(self, code="session_ended", message="You have been logged out. Log in again to go on."):
        super().__init__(code, message)


class AccessRevoked(SessionEnded):
    """The account is still logged in but may no longer chat (its role was removed)."""

    close_code = 4403

    def __init__(self):
        super().__init__("access_revoked", "Your account may no longer chat here: its role was changed. Ask an admin.")


def utf16_length(text):
    """Length as the browser counts it (UTF-16 code units): chunk offsets use this unit."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def message_frame(message, text=None):
    """A whole message rendered by the same template the page uses (runs the ORM: call it in a thread)."""
    if text is not None:
        message.content = text
    return message_frames([message])[0]


def message_frames(messages):
    """Several messages of one conversation as frames, their siblings read in one query."""
    if not messages:
        return []
    parents = {message.parent_id for message in messages}
    nulls = models.Q(parent__isnull=True) if None in parents else models.Q(pk__in=[])
    siblings = Message.objects.filter(models.Q(parent_id__in=parents - {None}) | nulls,
                                      conversation_id=messages[0].conversation_id)
    tree.annotate_siblings(messages, list(siblings))
    return [{"type": "message", "message_id": message.pk, "status": message.status,
             "html": render_to_string("conversations/_message.html", {"message": message})} for message in messages]


def snapshot_frame(message, text):
    """A reply being written, as far as it goes: a new watcher's starting point for its chunks."""
    return {**message_frame(message, text), "offset": utf16_length(text)}


def status_frame(message_id, text):
    """What a reply waits for before its first chunk, for its page to show in place of "writing…";
    the first chunk (or the final message) ends it. Sent again every so often while the wait lasts."""
    return {"type": "status", "message_id": message_id, "text": text}


def loading_text(model_name, seconds, progress=""):
    """A reply's status while its model loads: "loading chitchat… 3 s, loading weights"."""
    return f"loading {model_name}… {seconds:.0f} s" + (f", {progress}" if progress else "")


def path_frame(conversation):
    """The whole active branch, rendered, for watchers to redraw after a branch change or a lost socket."""
    conversation.refresh_from_db(fields=["leaf"])
    html = render_to_string("conversations/_path.html", {"messages_list": conversation.active_path()})
    return {"type": "path", "html": html}


def group_for(conversation_id):
    """The channel-layer group that every open socket of this conversation joins."""
    return f"conversation-{conversation_id}"


def user_group(user_id):
    """The group every open socket of this user joins: told when their access changes (access.py)."""
    return f"user-{user_id}"


def writers_for(conversation_id):
    """The group of the processes writing a reply in this conversation (stop, sync, roll-call answers; inbox.py)."""
    return f"conversation-{conversation_id}-writers"


class _Layer:
    """Logs a failing channel layer once per outage, not once per frame."""

    failing_since = None

    def failed(self, exc):
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            log.warning("the channel layer failed (%s: %s); frames are dropped until it answers again",
                        type(exc).__name__, exc)

    def answered(self):
        if self.failing_since is not None:
            log.warning("the channel layer answers again after %.1f s", time.monotonic() - self.failing_since)
            self.failing_since = None


layer_health = _Layer()


async def _best_effort(call, *args):
    try:
        await call(*args)
    except Exception as exc:  # noqa: BLE001 - Redis down, a full channel: the sender goes on
        layer_health.failed(exc)
        return False
    layer_health.answered()
    return True


async def publish(conversation_id, frame):
    """Send a frame to every socket of the conversation; False if the channel layer failed."""
    return await tell_watchers(conversation_id, {"type": "chat.frame", "frame": frame})


async def tell_watchers(conversation_id, message):
    """Send a channel-layer message (`chat.frame`, `reply.roll_call`) to every socket of the conversation."""
    return await _best_effort(get_channel_layer().group_send, group_for(conversation_id), message)


async def tell_writers(conversation_id, message):
    """Send a message (`reply.stop`, `reply.sync`…) to every reply task of the conversation, in any process."""
    return await _best_effort(get_channel_layer().group_send, writers_for(conversation_id), message)


async def send_to(channel, message):
    return await _best_effort(get_channel_layer().send, channel, message)


async def join_writers(conversation_id, channel):
    return await _best_effort(get_channel_layer().group_add, writers_for(conversation_id), channel)


async def leave_writers(conversation_id, channel):
    return await _best_effort(get_channel_layer().group_discard, writers_for(conversation_id), channel)
