"""The generation service: one asyncio task per assistant reply, not tied to any socket.

    consumer --begin()--> turns.prepare: [user message, streaming reply] saved --> ReplyTask
    ReplyTask: modelhub request -> chunks -> the conversation's group -> every watcher
               partial text saved at the first chunk, then more and more seldom up to every
               CHAT_FLUSH_SECONDS (`Flushes`), final text/status/usage once

The task owns the reply, so a reload, a second tab or a dropped socket changes nothing
about it. Its process's inbox (inbox.py) joins the conversation's writers group, so a
stop or a sync asked from any process reaches it. A channel layer that fails costs watchers
frames, never the reply: the task goes on generating and saving, and pages catch up
when their socket comes back. A database that goes away is waited for (durable.py).

A reply no page watches (all tabs closed, in every process) keeps going for
CHAT_ORPHAN_GRACE_SECONDS, so a reload picks it up; then it is stopped and saved as
`interrupted` with the text it had. On shutdown (SIGTERM) every reply of the process is
stopped and saved the same way (`shut_down`).

`_replies` and `_watchers` belong to the event loop: only code running on it reads them.
"""

import asyncio
import logging
import time
from collections import Counter

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from conversations.chat.frames import loading_text, message_frame, snapshot_frame, status_frame
from conversations.chat.handoff import HandedOver
from conversations.chat.turns import Turn, prepare  # noqa: F401  (Turn: what callers build)
from conversations.chat.written import Written
from conversations.delivery import durable
from conversations.delivery.groups import publish, send_to, tell_watchers, tell_writers
from conversations.delivery.inbox import Inbox
from conversations.errors import ChatError, SessionEnded
from conversations.inspection.prompt import reply_notice
from conversations.models import Arena, Message, writers
from modelhub import api
from modelhub.api import ModelhubError

log = logging.getLogger(__name__)

_replies = {}  # message id -> ReplyTask, for replies running in this process
_watchers = Counter()  # conversation id -> open sockets in this process
inbox = Inbox(_replies)  # where stop, sync and roll-call answers for these replies arrive

SHUTDOWN = "The server stopped while this reply was written; this is the text it had."
ROLL_CALL_SECONDS = 1.0  # how long a reply without local watchers waits for pages in other processes to answer
LOADING_STATUS_SECONDS = 0.5  # how often a reply waiting for its model's load tells its pages how far it got


async def begin(user, conversation_id, turn, guard=None, follow=None):
    """Save the turn, create (or reopen) the reply rows and start their tasks. Raises ChatError.

    `guard`: a check to pass first, in the same trip to the database (turns.prepare).
    `follow`: awaited with the saved conversation before any frame of it is published (an API
    call, whose conversation is new, joins its group there: openai_api/calls.py).

    The replies are reserved in modelhub first (`api.reserve`): replies running meanwhile
    hold their next step for them, so they start as soon as they are saved. Saving and
    rendering take one trip to the database thread; generation starts right after it, and
    the tasks publish their first chunk once the new messages are announced.
    """
    reservations = [api.reserve() for _ in range(2 if turn.kind == "compare" else 1)]
    try:
        saved = {}
        try:
            conversation, plans, frames = await durable.call(
                prepare, user, conversation_id, turn, saved, guard, within=settings.CHAT_DB_RETRY_SECONDS
            )
        except durable.UNREACHABLE:
            if "turn" in saved:  # saved, but not shown: the pages catch up; the reply goes on
                conversation, plans, _ = saved["turn"]
                frames = []
            else:
                raise ChatError(
                    "database_unavailable",
                    "The database is not answering, so your message was not "
                    "saved. It is back in the box: try again in a moment.",
                ) from None
        tasks = [_start(plan, reservations) for plan in plans]
        try:
            if follow is not None:
                await follow(conversation)
            for frame in frames:
                await publish(conversation.pk, frame)
        finally:
            for task in tasks:
                task.announced.set()
        return plans[0].reply if plans else None
    finally:
        for reservation in reservations:  # those no task took: the turn was refused or failed
            reservation.release()


def _start(plan, reservations):
    if settings.MODELHUB_WORKERS:  # a model worker process writes it (handoff.py)
        return _hand_over(plan)
    return start_task(plan, reservations.pop())


def start_task(plan, reservation):
    """Write this reply here: its task, in `_replies` and `writers.writing` until it ends."""
    task = ReplyTask(plan.reply, plan.spec, plan.adapter, plan.history, reservation)
    _replies[plan.reply.pk] = task
    writers.writing.add(plan.reply.pk)
    task.task = asyncio.create_task(task.run(), name=f"reply-{plan.reply.pk}")
    return task


def _hand_over(plan):
    handed = HandedOver(plan.reply, inbox, forget=_forget)
    _replies[plan.reply.pk] = handed
    writers.writing.add(plan.reply.pk)
    handed.task = asyncio.create_task(handed.run(), name=f"handoff-{plan.reply.pk}")
    return handed


def _forget(task):
    _replies.pop(task.reply.pk, None)
    writers.writing.discard(task.reply.pk)


def _streaming_ids(user, conversation_id, guard):
    if guard is not None and not guard():
        raise SessionEnded()
    return list(Message.objects.streaming_of(user).filter(conversation_id=conversation_id).values_list("pk", flat=True))


async def stop(user, conversation_id, guard=None):
    """Ask the streaming replies of this conversation (two in a comparison), wherever they run, to stop."""
    streaming = await durable.call(_streaming_ids, user, conversation_id, guard, within=settings.CHAT_DB_RETRY_SECONDS)
    if not streaming:
        raise ChatError("nothing_to_stop", "No reply is being written.")
    for message_id in streaming:
        if message_id in _replies:
            _replies[message_id].stop("stopped")  # here: at once, even with the channel layer down
        else:
            await tell_writers(conversation_id, {"type": "reply.stop", "message_id": message_id})


async def catch_up(conversation_id, channel):
    """The snapshots that bring a socket up to date with the replies being written in the conversation.

    Replies of this process are returned, for the socket to send before any chunk queued for it
    (their text is taken now: chunks that follow start where it ends); replies of another
    process are asked through the writers group and answer that channel by themselves.
    """
    local = [task for task in _replies.values() if task.reply.conversation_id == conversation_id]
    if not local:
        await tell_writers(
            conversation_id, {"type": "reply.sync", "conversation_id": conversation_id, "reply_to": channel}
        )
    return [await task.snapshot() for task in local]


def watch(conversation_id):
    _watchers[conversation_id] += 1


def unwatch(conversation_id):
    _watchers[conversation_id] -= 1
    if _watchers[conversation_id] > 0:
        return
    del _watchers[conversation_id]
    for task in list(_replies.values()):
        if task.reply.conversation_id == conversation_id:
            task.check_watchers_later()


async def shut_down(timeout):
    """Stop every reply of this process and save each with its text, within `timeout` seconds."""
    tasks = list(_replies.values())
    if not tasks:
        return
    log.warning("shutting down: saving %d replies being written", len(tasks))
    for task in tasks:
        task.stop("shutdown")
    running = [task.task for task in tasks]
    _, late = await asyncio.wait(running, timeout=timeout / 2)
    for pending in late:  # the model did not end them in time: save what they have anyway
        pending.cancel()
    if late:
        await asyncio.wait(late, timeout=timeout / 2)


class Flushes:
    """When a reply's text is saved while it streams: the first text at once, then after 0.25 s, 0.5 s, 1 s…
    up to every `interval` seconds, so a writer killed early loses little of a reply that just began."""

    FIRST_INTERVAL = 0.25

    def __init__(self, interval, clock=time.monotonic):
        self.interval, self.clock = interval, clock
        self.next_at, self.gap = 0.0, min(self.FIRST_INTERVAL, interval)

    def due(self):
        now = self.clock()
        if now < self.next_at:
            return False
        self.next_at = now + self.gap
        self.gap = min(self.gap * 2, self.interval)
        return True


class ReplyTask:
    def __init__(self, reply, spec, adapter, history, reservation):
        self.reply = reply
        self.reservation = reservation  # modelhub's place for this reply (api.reserve), taken by its start
        self.spec = spec
        self.adapter = adapter
        self.history = history
        self.written = Written(reply.content, reply.reasoning)  # empty, or the answer being continued
        self.notice = ""
        self.request = None
        self.task = None
        self.stop_reason = "stopped"
        self.stop_requested = False  # a stop can arrive before the modelhub request exists
        self.announced = asyncio.Event()  # set once watchers have the reply's message: frames may follow
        self.watched_at = time.monotonic()  # when a page last said it watches (roll call, sync)
        self.flush_failing = False
        # Roll calls left unanswered before it is interrupted: one after a web process's last page left (the
        # grace already passed); a model worker, which calls the roll all along, waits for a second one so that
        # a page reconnecting at that moment does not cost the reply.
        self.roll_calls_to_miss = 1
        self.missed_roll_calls = 0

    @property
    def conversation_id(self):
        return self.reply.conversation_id

    def stop(self, reason):
        self.stop_reason = reason
        self.stop_requested = True
        if self.request is not None:
            self.request.cancel()

    async def snapshot(self):
        answer, reasoning = self.written.answer, self.written.reasoning
        return await durable.call(snapshot_frame, self.reply, answer, reasoning, within=settings.CHAT_DB_RETRY_SECONDS)

    def watched(self):
        """A page in some process showed this reply just now (a roll-call answer, a sync)."""
        self.watched_at = time.monotonic()

    async def send_snapshot(self, channel):
        await send_to(channel, {"type": "chat.frame", "frame": await self.snapshot()})

    async def run(self):
        await inbox.join(self.conversation_id)
        try:
            await self._generate()
        except asyncio.CancelledError:  # the server is shutting down: keep what exists
            if self.request is not None:
                self.request.cancel()
            await self._finish(Message.Status.INTERRUPTED, error=SHUTDOWN)
            raise
        except Exception as exc:  # a bug here must still end the row, with what it has
            log.exception("reply %s failed", self.reply.pk)
            if self.request is not None:
                self.request.cancel()
            await self._finish(Message.Status.ERROR, error=f"The server failed while writing this reply ({exc}).")
        finally:
            _forget(self)
            self.reservation.release()  # cancelled before it reached modelhub (else this does nothing)
            asyncio.ensure_future(inbox.leave(self.conversation_id))

    async def _generate(self):
        try:
            self.request = self.reservation.start(
                self.spec, self.history, self.reply.generation_options, adapter=self.adapter
            )
            if self.stop_requested:
                self.request.cancel()
            await self.announced.wait()
            flushes = Flushes(settings.CHAT_FLUSH_SECONDS)
            async for part, text in self._pieces():
                await publish(self.conversation_id, self.written.add(part, text, self.reply.pk))
                if flushes.due():
                    await self._flush()
        except ModelhubError as exc:
            log.warning("reply %s failed: %s", self.reply.pk, exc.message)
            await self.announced.wait()  # the user's message reaches the page before its reply's error
            await publish(self.conversation_id, {"type": "error", "code": exc.code, "message": exc.message})
            await self._finish(Message.Status.ERROR, error=exc.message)
            return
        usage = self.request.usage
        self.notice = reply_notice(usage, self.adapter)  # history left out, an adapter's other template
        status, error = Message.Status.COMPLETE, ""
        if usage.finish_reason == "cancelled":
            status = Message.Status.STOPPED
            if self.stop_reason in ("interrupted", "shutdown"):
                status = Message.Status.INTERRUPTED
            if self.stop_reason == "shutdown":
                error = SHUTDOWN
        await self._finish(status, usage=usage, error=error)

    async def _flush(self):
        """Save the text so far; a database that does not answer now is tried again at the next flush."""
        try:
            await durable.call(self.reply.save_partial, self.written.answer, reasoning=self.written.reasoning)
        except durable.UNREACHABLE as exc:
            if not self.flush_failing:
                log.warning(
                    "reply %s: partial text not saved (%s); it stays in memory", self.reply.pk, durable.first_line(exc)
                )
            self.flush_failing = True
        else:
            self.flush_failing = False

    async def _finish(self, status, usage=None, error=""):
        """Save the final row (waiting out a database outage, up to CHAT_SAVE_RETRY_SECONDS), then tell the pages."""
        reply = self.reply
        try:
            await durable.call(
                reply.finish,
                status,
                self.written.answer,
                usage=usage,
                error=error,
                notice=self.notice,
                reasoning=self.written.reasoning,
                reasoning_seconds=self.written.thinking_seconds,
                within=settings.CHAT_SAVE_RETRY_SECONDS,
            )
            frame = await durable.call(message_frame, reply, within=settings.CHAT_DB_RETRY_SECONDS)
        except durable.UNREACHABLE:
            lost = len(self.written.answer) + len(self.written.reasoning)
            log.error("reply %s: the database stayed away; %d characters of text are lost", reply.pk, lost)
            return
        await self.announced.wait()
        for pause in (0.5, 1, 2, 4):  # the last frame matters most: a page waits for it
            if await publish(reply.conversation_id, {**frame, "type": "done"}):
                return
            await asyncio.sleep(pause)

    # --- waiting for the model ------------------------------------------------------

    async def _pieces(self):
        """The request's (part, text) as they come; until the first, the pages hear what the reply waits for."""
        first = asyncio.Event()
        telling = asyncio.create_task(self._tell_loading(first), name=f"reply-{self.reply.pk}-loading")
        try:
            async for piece in self.request.pieces(settings.CHAT_STREAM_INTERVAL_SECONDS):
                first.set()
                yield piece
        finally:
            first.set()
            await telling  # at once, or after the publish in flight: no status frame follows the reply's end

    async def _tell_loading(self, first):
        """While the model loads, a `status` frame every LOADING_STATUS_SECONDS (a page that connects meanwhile
        gets one too) with the load's progress, until the first chunk; never cancelled mid-publish."""
        while not first.is_set() and (loading := api.loading(self.spec)) is not None:
            text = loading_text(self.spec, *loading)
            await publish(self.conversation_id, status_frame(self.reply.pk, text))
            try:
                await asyncio.wait_for(first.wait(), LOADING_STATUS_SECONDS)
            except TimeoutError:
                pass

    # --- is anybody watching? ------------------------------------------------------

    def check_watchers_later(self):
        asyncio.get_running_loop().call_later(
            settings.CHAT_ORPHAN_GRACE_SECONDS, lambda: asyncio.ensure_future(self._roll_call())
        )

    async def _roll_call(self):
        """No page of this process watches the reply: unless one in another process does, interrupt it."""
        if self.task is None or self.task.done() or _watchers[self.conversation_id] > 0:
            return
        if isinstance(get_channel_layer(), InMemoryChannelLayer):  # one process: nobody else could watch
            self.stop("interrupted")
            return
        asked = time.monotonic()
        if inbox.channel is None or not await tell_watchers(
            self.conversation_id, {"type": "reply.roll_call", "reply_to": inbox.channel}
        ):
            self.check_watchers_later()  # the layer cannot tell now: ask again later, keep writing
            return
        await asyncio.sleep(ROLL_CALL_SECONDS)
        if _watchers[self.conversation_id] > 0:
            return
        if self.watched_at >= asked:
            self.missed_roll_calls = 0
            self.check_watchers_later()  # watched elsewhere: ask again once that page may have left
            return
        self.missed_roll_calls += 1
        if self.missed_roll_calls >= self.roll_calls_to_miss:
            self.stop("interrupted")
        else:
            self.check_watchers_later()


async def after_recovery(messages):
    """Replies whose writer is gone were ended (the heartbeat's `on_recovered`): the arenas waiting
    for them settle, and their pages are told."""
    await durable.call(Arena.objects.settle)
    for message in messages:
        frame = await durable.call(message_frame, message)
        await publish(message.conversation_id, {**frame, "type": "done"})
