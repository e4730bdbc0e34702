"""The channel layer as the app uses it: group names, best-effort sends, and the layer's health.

Every open socket of a conversation joins `group_for(id)` and forwards its `chat.frame`
messages; every process writing a reply in it joins `writers_for(id)` (inbox.py) and hears
stop and sync requests there, from whichever process the asking socket lives in; every
socket of a user joins `user_group(id)`, told when the user's access changes.

Sending is best effort: a channel layer that is down (Redis restarting) costs the watchers
some frames, never the reply. Pages that missed frames catch up from a `path` frame and the
writer's snapshot when their socket comes back (`sync`).
"""

import logging
import time

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def group_for(conversation_id):
    """The channel-layer group that every open socket of this conversation joins."""
    return f"conversation-{conversation_id}"


def user_group(user_id):
    """The group every open socket of this user joins: told when their access changes (access/permissions.py)."""
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
            log.warning(
                "the channel layer failed (%s: %s); frames are dropped until it answers again", type(exc).__name__, exc
            )

    def answered(self):
        if self.failing_since is not None:
            log.warning("the channel layer answers again after %.1f s", time.monotonic() - self.failing_since)
            self.failing_since = None


layer_health = _Layer()


async def _best_effort(call, *args):
    try:
        await call(*args)
    except Exception as exc:
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
