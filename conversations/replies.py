"""The generation service: one asyncio task per assistant reply, not tied to any socket.

    consumer --begin()--> [save user message, create streaming reply] --> ReplyTask
    ReplyTask: modelhub request -> chunks -> channel-layer group -> every watcher
               partial text saved every CHAT_FLUSH_SECONDS, final text/status/usage once

The task owns the reply, so a reload, a second tab or a dropped socket changes
nothing about it. Stop travels through the conversation's channel-layer group, so
every consumer of that conversation, in any process, hears it, and the process
running the reply cancels it.

A reply left with no watcher in this process (all tabs closed) keeps going for
CHAT_ORPHAN_GRACE_SECONDS, so a reload picks it up; after that it is stopped and
saved as `interrupted` with the text it had.
"""

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.template.loader import render_to_string

from conversations import tree
from conversations.forms import ModelChoiceForm
from conversations.models import Conversation, Message
from modelhub import api
from modelhub.options import InvalidOptions, ModelhubError, ModelNotFound

log = logging.getLogger(__name__)

_replies = {}  # message id -> ReplyTask, for replies running in this process
_watchers = Counter()  # conversation id -> open sockets in this process


class ChatError(Exception):
    """A user-facing refusal: becomes one error frame {"type": "error", "code", "message"}."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def frame(self):
        return {"type": "error", "code": self.code, "message": self.message}


def utf16_length(text):
    """Length as the browser counts it (UTF-16 code units): chunk offsets use this unit."""
    return len(text.encode("utf-16-le")) // 2


def message_frame(message, text=None):
    """A whole message rendered by the same template the page uses (runs the ORM: call it in a thread)."""
    if text is not None:
        message.content = text
    tree.annotate_siblings([message], list(Message.objects.filter(conversation_id=message.conversation_id,
                                                                  parent_id=message.parent_id)))
    html = render_to_string("conversations/_message.html", {"message": message})
    return {"type": "message", "message_id": message.pk, "status": message.status, "html": html}


def group_for(conversation_id):
    """The channel-layer group that every open socket of this conversation joins."""
    return f"conversation-{conversation_id}"


async def publish(conversation_id, frame):
    await get_channel_layer().group_send(group_for(conversation_id), {"type": "chat.frame", "frame": frame})


BUSY = "A reply is still being written; stop it or wait for it to finish."


@dataclass
class Turn:
    """What the user asked for: a new message, an edited question, another answer, or more of one."""

    kind: str  # send, edit, regenerate, continue, compare
    content: str = ""
    message_id: int | None = None
    overrides: dict = field(default_factory=dict)
    models: list = field(default_factory=list)  # compare: two model-choice keys ("m3", "m3-a7")


def _idle_conversation(user, conversation_id, replies=1):
    """The user's conversation, if it may start `replies` new replies now; else a ChatError."""
    conversation = Conversation.objects.for_user(user).select_related("model").filter(pk=conversation_id).first()
    if conversation is None:
        raise ChatError("unknown_conversation", "This conversation does not exist (it may have been deleted).")
    if conversation.streaming_reply() is not None:
        raise ChatError("busy", BUSY)
    limit = settings.CHAT_MAX_REPLIES_PER_USER
    writing = Message.objects.filter(conversation__in=Conversation.objects.for_user(user),
                                     status=Message.Status.STREAMING).count()
    if writing + replies > limit:
        raise ChatError("too_many_replies", f"{writing} of your replies are being written in other conversations "
                                            f"(at most {limit} at once): wait for one to finish, or stop it.")
    return conversation


@database_sync_to_async
def _prepare_comparison(user, conversation_id, turn):
    """Save the question and two streaming answers from two model choices, side by side."""
    conversation = _idle_conversation(user, conversation_id, replies=2)
    choices = ModelChoiceForm(user).options
    if len(turn.models) != 2 or any(not isinstance(key, str) or key not in choices for key in turn.models):
        raise ChatError("unknown_model", "Pick two of the listed models to compare.")
    sides = []
    for key in turn.models:
        spec, adapter, _ = choices[key]
        try:
            options = api.options_for(spec, {**conversation.options, **turn.overrides}).as_dict()
        except InvalidOptions as exc:
            raise ChatError(exc.code, exc.message) from exc
        sides.append((spec, adapter, options))
    comparison = conversation.start_comparison(turn.content, *sides)
    if comparison is None:
        raise ChatError("busy", BUSY)
    plans = []
    for reply, (spec, adapter, _) in zip((comparison.left, comparison.right), sides):
        plans.append((reply, spec, adapter, conversation.history(upto=reply)))
    return conversation, plans


@database_sync_to_async
def _prepare(user, conversation_id, turn):
    """Save the turn and render what watchers must see, in one trip to the database thread."""
    conversation, user_message, reply, model = _save_turn(user, conversation_id, turn)
    frames = [{"type": "title", "title": conversation.title}]
    if turn.kind in ("edit", "regenerate"):  # a new branch: every watcher redraws the active path
        frames.append(path_frame(conversation))
    else:
        frames += [message_frame(message) for message in (user_message, reply) if message is not None]
    return reply, model, frames


def _save_turn(user, conversation_id, turn):
    """Save what the turn adds and the streaming reply row; everything a reply task needs."""
    conversation = _idle_conversation(user, conversation_id)
    target = None
    if turn.kind != "send":
        role = Message.Role.USER if turn.kind == "edit" else Message.Role.ASSISTANT
        target = conversation.messages.filter(pk=turn.message_id, role=role).first()
        if target is None:
            raise ChatError("unknown_message", f"There is no {role} message {turn.message_id!r} here to {turn.kind}.")
        if turn.kind == "continue" and target.finish_reason != "length":
            raise ChatError("cannot_continue", "Only an answer cut by the token limit can be continued.")
    try:
        spec, adapter = conversation.model_for(user)
        if spec is None:
            raise ModelNotFound("no model is registered that you may use")
        options = api.options_for(spec, {**conversation.options, **turn.overrides}).as_dict()
    except InvalidOptions as exc:  # the user's input is refused before anything is saved
        raise ChatError(exc.code, exc.message) from exc
    except ModelhubError as exc:  # no model at all: keep the question, store the failure
        if turn.kind != "send":
            raise ChatError(exc.code, exc.message) from exc
        user_message = conversation.add_user_message(turn.content)
        return conversation, user_message, conversation.add_failed_reply(exc.message), None
    user_message = None
    if turn.kind == "send":
        user_message = conversation.add_user_message(turn.content)
    elif turn.kind == "edit":
        user_message = conversation.edit(target, turn.content)
    if turn.kind == "continue":
        reply = conversation.resume_reply(target, spec, options)
    else:
        parent = target.parent if turn.kind == "regenerate" else None
        reply = conversation.start_reply(spec, options, adapter, parent=parent)
    if reply is None:
        raise ChatError("busy", BUSY)
    return conversation, user_message, reply, (spec, adapter, conversation.history(upto=reply))


async def begin(user, conversation_id, turn):
    """Save the turn, create (or reopen) the reply and start its task. Raises ChatError.

    The reply is announced to modelhub first (`api.expect`): replies running meanwhile
    hold their next step for it, so it starts as soon as it is saved. Saving and
    rendering take one trip to the database thread (which every user's saves share,
    in turn); generation starts right after it, and the task publishes its first
    chunk once the new messages are announced.
    """
    arrivals = [api.expect() for _ in range(2 if turn.kind == "compare" else 1)]
    try:
        return await _begin(user, conversation_id, turn, arrivals)
    finally:
        for arrival in arrivals:  # those no task took: the turn was refused or failed
            arrival.done()


async def _begin(user, conversation_id, turn, arrivals):
    if turn.kind == "compare":
        conversation, plans = await _prepare_comparison(user, conversation_id, turn)
        tasks = [_start_task(reply, model, arrivals.pop()) for reply, *model in plans]
        try:
            await publish(conversation_id, {"type": "title", "title": conversation.title})
            await publish(conversation_id, await database_sync_to_async(path_frame)(conversation))
        finally:
            for task in tasks:
                task.announced.set()
        return plans[0][0]
    reply, model, frames = await _prepare(user, conversation_id, turn)
    task = _start_task(reply, model, arrivals.pop()) if model is not None else None
    try:
        for frame in frames:
            await publish(conversation_id, frame)
    finally:
        if task is not None:
            task.announced.set()
    return reply


def _start_task(reply, model, arrival):
    task = ReplyTask(reply, *model, arrival=arrival)
    _replies[reply.pk] = task
    task.task = asyncio.create_task(task.run(), name=f"reply-{reply.pk}")
    return task


def path_frame(conversation):
    """The whole active branch, rendered, for watchers to redraw after a branch change."""
    conversation.refresh_from_db(fields=["leaf"])
    html = render_to_string("conversations/_path.html", {"messages_list": conversation.active_path()})
    return {"type": "path", "html": html}


async def stop(user, conversation_id):
    """Ask the streaming replies of this conversation (two in a comparison), wherever they run, to stop."""
    streaming = await database_sync_to_async(
        lambda: list(
            Message.objects.filter(
                conversation__in=Conversation.objects.for_user(user).filter(pk=conversation_id),
                status=Message.Status.STREAMING,
            ).values_list("pk", flat=True)
        )
    )()
    if not streaming:
        raise ChatError("nothing_to_stop", "No reply is being written.")
    for message_id in streaming:
        await get_channel_layer().group_send(group_for(conversation_id), {"type": "reply.stop", "message_id": message_id})


def cancel_local(message_id, reason="stopped"):
    """Cancel the reply if it runs in this process (every consumer calls this on a stop frame)."""
    task = _replies.get(message_id)
    if task is not None:
        task.stop(reason)


def snapshot(conversation_id):
    """The frame that brings a new watcher up to date with a reply streaming here, if any (call in a thread)."""
    for task in _replies.values():
        if task.reply.conversation_id == conversation_id:
            return {**message_frame(task.reply, task.text), "offset": utf16_length(task.text)}
    return None


def watch(conversation_id):
    _watchers[conversation_id] += 1


def unwatch(conversation_id):
    _watchers[conversation_id] -= 1
    if _watchers[conversation_id] > 0:
        return
    del _watchers[conversation_id]
    for task in list(_replies.values()):
        if task.reply.conversation_id == conversation_id:
            asyncio.get_running_loop().call_later(settings.CHAT_ORPHAN_GRACE_SECONDS, task.stop_if_orphaned)


class ReplyTask:
    def __init__(self, reply, spec, adapter, history, arrival=None):
        self.reply = reply
        self.arrival = arrival  # modelhub's notice that this reply is coming (settled by api.start)
        self.spec = spec
        self.adapter = adapter
        self.history = history
        self.text = reply.content  # empty, or the answer being continued
        self.notice = ""
        self.request = None
        self.task = None
        self.stop_reason = "stopped"
        self.stop_requested = False  # a stop can arrive before the modelhub request exists
        self.announced = asyncio.Event()  # set once watchers have the reply's message: chunks may follow

    def stop(self, reason):
        self.stop_reason = reason
        self.stop_requested = True
        if self.request is not None:
            self.request.cancel()

    def stop_if_orphaned(self):
        if _watchers[self.reply.conversation_id] == 0:
            cancel_local(self.reply.pk, reason="interrupted")

    async def run(self):
        try:
            await self._generate()
        except asyncio.CancelledError:  # server shutting down: keep what exists
            if self.request is not None:
                self.request.cancel()
            await self._finish(Message.Status.INTERRUPTED, error="The server stopped while this reply was written.")
            raise
        finally:
            _replies.pop(self.reply.pk, None)
            if self.arrival is not None:
                self.arrival.done()  # cancelled before it reached modelhub

    async def _generate(self):
        conversation_id = self.reply.conversation_id
        try:
            overrides = self.reply.generation_options
            self.request = api.start(
                self.spec, self.history, overrides, loop=asyncio.get_running_loop(), adapter=self.adapter,
                arrival=self.arrival,
            )
            if self.stop_requested:
                self.request.cancel()
            await self.announced.wait()
            last_flush = time.monotonic()
            async for text in self.request.chunks(settings.CHAT_STREAM_INTERVAL_SECONDS):
                offset = utf16_length(self.text)
                self.text += text
                frame = {"type": "chunk", "message_id": self.reply.pk, "offset": offset, "text": text}
                await publish(conversation_id, frame)
                if time.monotonic() - last_flush >= settings.CHAT_FLUSH_SECONDS:
                    await database_sync_to_async(self.reply.save_partial)(self.text)
                    last_flush = time.monotonic()
        except ModelhubError as exc:
            log.warning("reply %s failed: %s", self.reply.pk, exc.message)
            await publish(conversation_id, {"type": "error", "code": exc.code, "message": exc.message})
            await self._finish(Message.Status.ERROR, error=exc.message)
            return
        usage = self.request.usage
        if usage.truncated_messages:
            self.notice = (
                f"The {usage.truncated_messages} oldest message(s) did not fit the model's context "
                "window and were left out of this reply's prompt."
            )
        status = Message.Status.COMPLETE
        if usage.finish_reason == "cancelled":
            status = Message.Status.INTERRUPTED if self.stop_reason == "interrupted" else Message.Status.STOPPED
        await self._finish(status, usage=usage)

    async def _finish(self, status, usage=None, error=""):
        reply = self.reply
        await database_sync_to_async(reply.finish)(status, self.text, usage=usage, error=error, notice=self.notice)
        frame = await database_sync_to_async(message_frame)(reply)
        await publish(reply.conversation_id, {**frame, "type": "done"})
