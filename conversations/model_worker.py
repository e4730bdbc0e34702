"""A model worker process (`manage.py modelhub_worker`): owns the models, writes the replies.

Web processes hand replies over (handoff.py); a worker receives them on the channels of
the models it serves (`modelhub.workers.model_channel`), takes each row over in one conditional
UPDATE and writes it with the very ReplyTask a web process would run (replies.py): chunks
to the conversation's group, partial text saved every CHAT_FLUSH_SECONDS, stop and sync from
any process through its inbox, and its heartbeat renewing its rows. Nobody watches in a
worker process, so each reply calls the roll across processes every
CHAT_ORPHAN_GRACE_SECONDS and is interrupted once no page anywhere answers. Arena answers are
offered the same way and written in a thread, as a web process would (arena/generation.py).

Several workers may serve the same model: each request goes to one of them (a channel's
messages are shared out among its receivers). A worker killed mid-reply leaves its rows to
the other processes' heartbeats, which mark them `interrupted` with their last flushed text
(at once on the same host, within CHAT_WRITER_TIMEOUT_SECONDS elsewhere). SIGTERM stops
and saves its replies, as in a web process.
"""

import asyncio
import logging
import signal
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, connections
from django.utils import timezone

from conversations import metrics
from conversations.arena import generation as arena_generation
from conversations.chat import replies
from conversations.chat.frames import message_frame
from conversations.chat.turns import Plan
from conversations.delivery import durable
from conversations.delivery.groups import publish, send_to
from conversations.delivery.heartbeat import Heartbeat
from conversations.models import Message, writers
from modelhub import api
from modelhub.api import ModelhubError, answer_attention, answer_try, model_channel
from modelhub.models import ModelSpec, ModelWorker
from modelhub.models.worker import REPORT_SECONDS

log = logging.getLogger(__name__)

RESCAN_SECONDS = 30.0  # a worker for every model looks for newly enabled ones this often


async def serve(names=None, stop=None):
    """Serve these models (None: every enabled one, new ones included) until `stop` is set."""
    stop = stop or asyncio.Event()
    heartbeat = Heartbeat(on_recovered=replies.after_recovery)
    await heartbeat.ensure()
    await heartbeat.recovered.wait()  # what earlier workers left is ended before this one takes replies
    receivers = {}
    # Loading starts now, in the models' own threads, so that the first reply does not wait: the models
    # named (this worker's own), or, serving every model, those a server loads at start (api.preload).
    try:
        if names:
            await database_sync_to_async(_load)(names)
        else:
            await database_sync_to_async(api.preload)()
    except DatabaseError as exc:
        log.warning("no model loaded at start, each loads on its first reply: %s", durable.first_line(exc))
    rescan_at = 0.0
    while not stop.is_set():
        if time.monotonic() >= rescan_at:
            try:
                new = [spec for spec in await database_sync_to_async(_specs)(names) if spec.name not in receivers]
            except DatabaseError as exc:  # the database is away: look again at the next report
                log.warning("could not read the models to serve: %s", durable.first_line(exc))
                new = []
            else:
                rescan_at = time.monotonic() + RESCAN_SECONDS
            for spec in new:
                receivers[spec.name] = asyncio.create_task(_receive(spec.name, stop), name=f"receive-{spec.name}")
            if new:
                log.info("ready: serving %s", ", ".join(f"{s.name} (channel {model_channel(s.name)})" for s in new))
        await _report(list(receivers))
        try:
            await asyncio.wait_for(stop.wait(), REPORT_SECONDS)
        except TimeoutError:
            pass
    await replies.shut_down(settings.CHAT_SHUTDOWN_SECONDS)
    try:
        await database_sync_to_async(ModelWorker.leave)(writers.identity())
    except DatabaseError:
        pass  # its row is not shown once it stops reporting


async def _report(names):
    """Tell the admin (ModelWorker rows) what this worker serves and how each model is doing."""
    status = api.runtime()
    served = {name: status.get(name, {"state": "not loaded"}) for name in names}
    try:
        await database_sync_to_async(ModelWorker.report)(writers.identity(), served)
    except DatabaseError as exc:  # the heartbeat says so too; serving goes on
        log.warning("could not report to the database: %s", durable.first_line(exc))


def _load(names):
    for spec in _specs(names):
        api.load(spec)


def _specs(names):
    specs = ModelSpec.objects.enabled()
    if names:
        found = list(specs.filter(name__in=names))
        missing = sorted(set(names) - {spec.name for spec in found})
        if missing:
            log.warning("not serving %s: no enabled model by that name", ", ".join(missing))
        return found
    return list(specs)


def run(names=None):
    """The process: serve until SIGTERM or SIGINT, then save the replies being written."""

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(names, stop)

    asyncio.run(main())


async def _receive(model_name, stopping):
    """Take this model's requests, one receive loop per channel, never cancelled (see inbox.py). Once the
    worker is `stopping`, a request it receives is put back on the channel for another worker."""
    layer = get_channel_layer()
    channel = model_channel(model_name)
    pause = 0.5
    while True:
        try:
            message = await layer.receive(channel)
        except Exception as exc:
            log.warning("receiving on %s failed (%s); retrying", channel, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)
            continue
        pause = 0.5
        if stopping.is_set():
            await send_to(channel, message)
            await asyncio.sleep(0.05)  # the other workers' turn: this one only passes requests back now
        elif time.time() > message.get("deadline", 0):
            log.warning("%s offered too long ago, dropped (the web process has failed it)", message.get("type"))
        elif message.get("type") == "reply.generate":
            asyncio.ensure_future(_take(message))
        elif message.get("type") == "prompt.try":
            asyncio.ensure_future(answer_try(message))
        elif message.get("type") == "attention.ask":
            asyncio.ensure_future(answer_attention(message))
        elif message.get("type") == "arena.generate":
            asyncio.ensure_future(asyncio.to_thread(_write_arena, message["arena_id"], message.get("writer")))


def _write_arena(arena_id, offered_by):
    """An arena's answers, written here (a thread's work) once this process is their writer."""
    try:
        taken = arena_generation.take_over(arena_id, offered_by)
    finally:
        connections.close_all()
    if taken:
        arena_generation.run(arena_id)


async def _take(message):
    """Take the offered reply over and write it; a stale or already-ended offer is dropped."""
    message_id = message.get("message_id")
    reservation = api.reserve()
    try:
        plan = await durable.call(_claim, message_id, message.get("writer"))
    except ModelhubError as exc:  # its model or adapter is gone: the row says so
        reservation.release()
        row = await durable.call(_fail, message_id, exc.message)
        await publish(row.conversation_id, {"type": "error", "code": exc.code, "message": exc.message})
        await publish(row.conversation_id, {**await durable.call(message_frame, row), "type": "done"})
        return
    if plan is None:
        reservation.release()
        log.info("reply %s: no longer offered (taken, stopped or failed), dropped", message_id)
        return
    task = replies.start_task(plan, reservation)
    await replies.inbox.join(plan.reply.conversation_id)  # stops sent from now on reach it
    await send_to(message["reply_to"], {"type": "reply.taken", "message_id": message_id})
    task.announced.set()  # the web process published the turn's frames before offering it
    task.roll_calls_to_miss = 2
    task.check_watchers_later()


def _claim(message_id, offered_by):
    """Become the row's writer if it is still offered by that process; its Plan, or None."""
    taken = Message.objects.filter(pk=message_id, status=Message.Status.STREAMING, writer=offered_by).update(
        writer=writers.identity(), heartbeat_at=timezone.now()
    )
    if not taken:
        return None
    writers.writing.add(message_id)  # from here the heartbeat renews it, whatever happens next
    reply = Message.objects.select_related("conversation").get(pk=message_id)
    try:
        spec = api.get_spec(reply.model_name)
        adapter = api.get_adapter(spec, reply.adapter_name) if reply.adapter_name else None
    except ModelhubError:
        writers.writing.discard(message_id)
        raise
    return Plan(reply, spec, adapter, reply.conversation.history(upto=reply))


def _fail(message_id, error):
    ended = Message.objects.filter(pk=message_id, status=Message.Status.STREAMING, writer=writers.identity()).update(
        status=Message.Status.ERROR, error=error, finished_at=timezone.now()
    )
    message = Message.objects.get(pk=message_id)
    if ended:
        metrics.record_reply(Message.Status.ERROR, message.model_name)
    return message
