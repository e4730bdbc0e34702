"""The life of one API call, kept as a conversation or not; views.py turns it into HTTP.

    KeptCall    the key keeps calls: the call is saved as a new conversation of the key's user
                and answered by the chat's own path (replies.begin: the user's question saved
                before generation, the reply row `streaming`, written in this process or by a
                model worker, batched with every other reply, under the same reply cap). The
                call follows the conversation's group as a page does (and answers roll calls,
                so a worker keeps writing), and reads the stored row at the end: the usage it
                returns is the stored reply's.
    UnkeptCall  the key keeps nothing: no conversation; the model is asked directly (modelhub in
                this process, or a model worker: workers.WorkerRequest), and while it runs the
                call holds a place under the reply cap by a running `UnkeptCallUsage` row (its
                model and tokens; never its text), ended by `close()` or, if this process dies,
                by the heartbeat of any other.

Both: `start()` (ApiError if refused; a call at its limit of replies at once first waits up to
CHAT_API_QUEUE_SECONDS for a place: `queued`), `async for part, text in call.chunks()` (its reasoning and its
answer, modelhub.api.REASONING / ANSWER), then `call.outcome` (with the tool calls it made);
`stop()` when the client went away (the stored reply ends `stopped`), `close()` always: views.py
runs it to its end even when the request is cancelled (`finish`).
"""

import asyncio
import time
from dataclasses import dataclass, field

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from conversations.access import limits
from conversations.access.limits import TooManyReplies
from conversations.chat import replies
from conversations.chat.turns import Turn
from conversations.delivery import durable
from conversations.delivery.groups import group_for, send_to
from conversations.errors import ChatError
from conversations.models import Message, UnkeptCallUsage, writers
from conversations.openai_api.requests import ApiError
from modelhub import api
from modelhub.api import ModelhubError, WorkerRequest

STATUS_OF_CODE = {
    "too_many_replies": 429,
    "busy": 429,
    "quota_exceeded": 429,
    "prompt_too_long": 400,
    "unknown_model": 404,
    "invalid_options": 400,
    "no_model_worker": 503,
    "model_load_failed": 503,
    "database_unavailable": 503,
}


def api_error(code, message, retry_after=None):
    return ApiError(STATUS_OF_CODE.get(code, 500), message, code=code, retry_after=retry_after)


def refusal(exc):
    """A ChatError as the API's error (a quota's: 429 with Retry-After)."""
    return api_error(exc.code, exc.message, getattr(exc, "retry_after", None))


async def queued(admit):
    """`await admit()`, tried again while it is refused only for the limit of replies at once, until
    CHAT_API_QUEUE_SECONDS have passed (then the refusal stands: 429 with Retry-After).

    A batch or benchmark client sends as many calls as it likes and rarely retries a 429; the engine
    batches every reply that is admitted, so a call that waits a moment for a place is answered
    soon after, where refusing it would fail it. Waiting calls look again every 50 to 250 ms
    (each look one short transaction), in no particular order: a place goes to whoever looks first."""
    deadline = time.monotonic() + settings.CHAT_API_QUEUE_SECONDS
    pause = 0.05
    while True:
        try:
            return await admit()
        except TooManyReplies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
        await asyncio.sleep(min(pause, left))  # (the last look is at the deadline)
        pause = min(2 * pause, 0.25)


@dataclass
class Outcome:
    status: str  # a Message status: complete, stopped, error…
    text: str  # the answer
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: ApiError | None = None
    reasoning: str = ""  # what the model thought before it answered
    tool_calls: list = field(default_factory=list)  # OpenAI's shape (finish_reason "tool_calls")


def start(call):
    return KeptCall(call) if call.key.keep_calls else UnkeptCall(call)


class KeptCall:
    def __init__(self, call):
        self.call = call
        self.user = call.key.user
        self.channel = self.conversation_id = self.reply = self.outcome = None
        self.closed = False
        self.error = None  # the reply's error frame, if it failed

    async def start(self):
        self.channel = await get_channel_layer().new_channel()
        turn = Turn("call", overrides=self.call.overrides, call=self.call)
        try:
            self.reply = await queued(lambda: replies.begin(self.user, None, turn, follow=self._follow))
        except ChatError as exc:
            raise refusal(exc) from None

    async def _follow(self, conversation):
        """Hear the conversation's frames from before its first one (replies.begin calls this)."""
        self.conversation_id = conversation.pk
        replies.watch(conversation.pk)
        await get_channel_layer().group_add(group_for(conversation.pk), self.channel)

    async def chunks(self):
        layer = get_channel_layer()
        while True:
            message = await layer.receive(self.channel)
            if message.get("type") == "reply.roll_call":  # a worker writing it asks whether anyone still reads
                await send_to(message["reply_to"], {"type": "reply.watching", "conversation_id": self.conversation_id})
                continue
            frame = message.get("frame") or {}
            if frame.get("type") == "chunk" and frame.get("message_id") == self.reply.pk:
                yield frame.get("part", api.ANSWER), frame["text"]
            elif frame.get("type") == "error":
                self.error = api_error(frame.get("code"), frame.get("message", ""))
            elif frame.get("type") == "done" and frame.get("message_id") == self.reply.pk:
                break
        row = await durable.call(Message.objects.get, pk=self.reply.pk, within=settings.CHAT_SAVE_RETRY_SECONDS)
        error = self.error or api_error("model_error", row.error) if row.status == Message.Status.ERROR else None
        self.outcome = Outcome(
            row.status,
            row.content,
            row.finish_reason,
            row.prompt_tokens or 0,
            row.completion_tokens or 0,
            error,
            row.reasoning,
            row.tool_calls,
        )

    async def stop(self):
        """The client went away: stop the reply (saved `stopped`, with its text), wherever it is written."""
        if self.conversation_id is None:
            return
        try:
            await replies.stop(self.user, self.conversation_id)
        except ChatError:  # it ended meanwhile
            pass

    async def close(self):
        if self.conversation_id is None or self.closed:
            return
        self.closed = True
        replies.unwatch(self.conversation_id)
        try:
            await get_channel_layer().group_discard(group_for(self.conversation_id), self.channel)
        except Exception:
            pass


class UnkeptCall:
    def __init__(self, call):
        self.call = call
        self.user = call.key.user
        self.request = self.outcome = self.usage_id = None

    async def start(self):
        try:
            self.usage_id = await queued(
                lambda: durable.call(_take_place, self.user, self.call, within=settings.CHAT_DB_RETRY_SECONDS)
            )
        except ChatError as exc:
            raise refusal(exc) from None
        call = self.call
        messages = call.messages
        if messages[0]["role"] != "system" and call.spec.system_prompt:  # as a conversation's history() does
            messages = [{"role": "system", "content": call.spec.system_prompt}, *messages]
        try:
            if settings.MODELHUB_WORKERS:
                self.request = WorkerRequest(call.spec, messages, call.overrides, call.adapter)
            else:
                self.request = api.start(call.spec, messages, call.overrides, adapter=call.adapter)
        except ModelhubError as exc:
            raise api_error(exc.code, exc.message) from None

    async def chunks(self):
        text = {api.REASONING: [], api.ANSWER: []}
        try:
            async for part, piece in self.request.pieces(settings.CHAT_STREAM_INTERVAL_SECONDS):
                text[part].append(piece)
                yield part, piece
        except ModelhubError as exc:
            answer = "".join(text[api.ANSWER])
            self.outcome = Outcome(Message.Status.ERROR, answer, error=api_error(exc.code, exc.message))
            return
        usage = self.request.usage
        status = Message.Status.STOPPED if usage.finish_reason == "cancelled" else Message.Status.COMPLETE
        self.outcome = Outcome(
            status,
            "".join(text[api.ANSWER]),
            usage.finish_reason,
            usage.prompt_tokens,
            usage.completion_tokens,
            reasoning=usage.reasoning or "".join(text[api.REASONING]),
            tool_calls=usage.tool_calls,
        )

    async def stop(self):
        if self.request is not None:
            self.request.cancel()

    async def close(self):
        usage_id, self.usage_id = self.usage_id, None
        if usage_id is None:
            return
        writers.calling.discard(usage_id)  # not renewed from now on: ended by any heartbeat if not below
        usage = self.request.usage if self.request is not None else None
        await durable.call(
            UnkeptCallUsage.end,
            usage_id,
            usage and usage.prompt_tokens or 0,
            usage and usage.completion_tokens or 0,
            within=settings.CHAT_SAVE_RETRY_SECONDS,
        )


def _take_place(user, call):
    """Admit the call (replies at once, the quotas) and record its running row, in one transaction with the
    user's row locked; the row's id. Its end and tokens are written when the call ends."""
    with transaction.atomic():
        limits.lock_user(user)
        limits.admit(user, key=call.key)
        return UnkeptCallUsage.begin(user, call.model).pk
