"""Handing a reply to a model worker process (MODELHUB_WORKERS), the web process's side.

With workers on, the models live in `manage.py modelhub_worker` processes (one owns the
GPU), and web processes only serve pages and sockets. A turn is saved exactly as without
them (turns.prepare: the question and the `streaming` reply row, written by this process);
then, instead of starting a ReplyTask here, the web process

1. publishes the turn's frames (the user's message comes first on every page),
2. sends `reply.generate` to the model's channel (`model_channel`); whichever worker
   serving that model receives it first
3. takes the row over in one conditional UPDATE (writer: this process -> the worker), joins
   the conversation's writers group and answers `reply.taken`; from then on the worker
   writes the reply with the same ReplyTask a web process runs (model_worker.py).

Until it is taken, a `HandedOver` stands in `replies._replies` for the reply: it keeps the
row's heartbeat, hears stop, sync and the `reply.taken` answer through this process's inbox,
and passes a stop asked meanwhile on to the worker. If no worker takes the reply within
MODELHUB_WORKER_TIMEOUT_SECONDS, the row is failed (if it is still this process's: a
worker taking it at the last moment wins) with a message saying so, and a worker that
receives the request later finds the row no longer offered and drops it.
"""

import asyncio
import logging
import time

from django.conf import settings
from django.utils import timezone

from conversations import metrics
from conversations.chat.frames import message_frame, snapshot_frame
from conversations.delivery import durable
from conversations.delivery.groups import publish, send_to, tell_writers
from conversations.models import Message, writers
from modelhub.api import model_channel

log = logging.getLogger(__name__)


def no_worker_message(model_name, seconds):
    return (
        f"No model worker took this reply within {seconds:g} s, so it was not written (no "
        f"`manage.py modelhub_worker` is serving {model_name} right now). Try again in a moment."
    )


class HandedOver:
    """A reply this process saved and offers to the workers, until one takes it (or none does)."""

    def __init__(self, reply, inbox, forget):
        self.reply = reply
        self.inbox = inbox
        self._forget = forget  # removes it from the process's replies once it is over
        self.announced = asyncio.Event()  # set by begin once the turn's frames are out
        self._taken = asyncio.Event()
        self.stop_reason = None
        self.task = None

    @property
    def conversation_id(self):
        return self.reply.conversation_id

    def taken(self):
        self._taken.set()

    def stop(self, reason):
        self.stop_reason = reason  # passed on once a worker has it

    def watched(self):
        pass

    def check_watchers_later(self):
        pass  # the worker calls the roll while it writes

    async def snapshot(self):
        return await durable.call(
            snapshot_frame,
            self.reply,
            self.reply.content,  # empty, or an answer to continue
            self.reply.reasoning,
            within=settings.CHAT_DB_RETRY_SECONDS,
        )

    async def send_snapshot(self, channel):
        await send_to(channel, {"type": "chat.frame", "frame": await self.snapshot()})

    async def run(self):
        await self.inbox.join(self.conversation_id)
        try:
            await self.announced.wait()
            if not await self._offer():
                await self._no_worker()
            elif self.stop_reason:
                await tell_writers(self.conversation_id, {"type": "reply.stop", "message_id": self.reply.pk})
        except asyncio.CancelledError:  # shutting down before a worker answered
            await durable.call(
                _fail_if_ours,
                self.reply.pk,
                Message.Status.INTERRUPTED,
                "The server stopped before a model worker took this reply.",
            )
            raise
        finally:
            self._forget(self)
            asyncio.ensure_future(self.inbox.leave(self.conversation_id))

    async def _offer(self):
        """Send the request to the model's workers; True once one of them has taken it."""
        timeout = settings.MODELHUB_WORKER_TIMEOUT_SECONDS
        request = {
            "type": "reply.generate",
            "message_id": self.reply.pk,
            "writer": writers.identity(),
            "reply_to": self.inbox.channel,
            "deadline": time.time() + timeout,
        }
        if not await send_to(model_channel(self.reply.model_name), request):
            return False
        try:
            await asyncio.wait_for(self._taken.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _no_worker(self):
        message = no_worker_message(self.reply.model_name, settings.MODELHUB_WORKER_TIMEOUT_SECONDS)
        failed = await durable.call(
            _fail_if_ours, self.reply.pk, Message.Status.ERROR, message, within=settings.CHAT_SAVE_RETRY_SECONDS
        )
        if failed is None:
            return  # a worker took it at the very last moment: it writes the reply
        log.warning(
            "reply %s: no model worker took it within %ss", self.reply.pk, settings.MODELHUB_WORKER_TIMEOUT_SECONDS
        )
        await publish(self.conversation_id, {"type": "error", "code": "no_model_worker", "message": message})
        frame = await durable.call(message_frame, failed)
        await publish(self.conversation_id, {**frame, "type": "done"})


def _fail_if_ours(message_id, status, error):
    """End the row with this status if this process still writes it; the row, or None."""
    ended = Message.objects.filter(pk=message_id, status=Message.Status.STREAMING, writer=writers.identity()).update(
        status=status, error=error, finished_at=timezone.now()
    )
    if not ended:
        return None
    message = Message.objects.get(pk=message_id)
    metrics.record_reply(status, message.model_name)
    return message
