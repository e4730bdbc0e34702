"""This process's one channel-layer channel for the replies it writes.

Stop requests, sync requests and roll-call answers for a reply come from sockets in any
process, through the writers group of its conversation (frames.writers_for). The inbox's
channel is in that group while a reply of the conversation runs here, and hands each
message to the reply task it concerns.

One receive loop per process, started with the first reply and ended by a message once
the last one is over, never cancelled: cancelling a receive on channels_redis can reorder
or lose other sockets' messages of the same process (django/channels_redis#151,
django/channels#1683). After a channel-layer failure (Redis restarting, whose groups are
then gone) it joins its groups again.
"""

import asyncio
import logging

from channels.layers import get_channel_layer

from conversations.delivery.groups import join_writers, layer_health, leave_writers, send_to

log = logging.getLogger(__name__)

CLOSE = {"type": "inbox.close"}


class Inbox:
    def __init__(self, replies):
        """`replies`: message id -> reply task of this process (stop(), send_snapshot(), watched())."""
        self.replies = replies
        self.channel = None
        self.task = None

    def _conversations(self):
        return {task.conversation_id for task in self.replies.values()}

    async def join(self, conversation_id):
        """Hear the conversation's writers group (call once the reply is in `replies`)."""
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.channel = await get_channel_layer().new_channel()
            self.task = loop.create_task(self._run(), name="chatsite-reply-inbox")
        await join_writers(conversation_id, self.channel)

    async def leave(self, conversation_id):
        """Stop hearing the conversation once no reply of it runs here (call after removing the reply)."""
        if self.channel is None or conversation_id in self._conversations():
            return
        await leave_writers(conversation_id, self.channel)
        if not self.replies:
            await send_to(self.channel, CLOSE)

    async def _run(self):
        layer = get_channel_layer()
        pause = 0.5
        while True:
            try:
                message = await layer.receive(self.channel)
            except Exception as exc:
                layer_health.failed(exc)
                if not self.replies:
                    return
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                for conversation_id in self._conversations():
                    await join_writers(conversation_id, self.channel)
                continue
            pause = 0.5
            if message.get("type") == CLOSE["type"]:
                if not self.replies:
                    return
                continue
            self._deliver(message)

    def _deliver(self, message):
        kind = message.get("type")
        if kind in ("reply.stop", "reply.taken"):
            task = self.replies.get(message.get("message_id"))
            if task is None:
                return
            if kind == "reply.stop":
                task.stop("stopped")
            elif hasattr(task, "taken"):  # a reply handed to a model worker, which took it (handoff.py)
                task.taken()
            return
        if kind not in ("reply.sync", "reply.watching"):
            return
        for task in [t for t in self.replies.values() if t.conversation_id == message.get("conversation_id")]:
            task.watched()
            if kind == "reply.sync" and isinstance(message.get("reply_to"), str):
                asyncio.ensure_future(task.send_snapshot(message["reply_to"]))
