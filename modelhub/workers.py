"""Model worker processes, modelhub's side: the channels they listen on, and a prompt tried on one.

With MODELHUB_WORKERS on, the models live in `manage.py modelhub_worker` processes and the web
processes load none (conversations/model_worker.py runs the worker, conversations/chat/handoff.py
hands chat replies to it). A worker receives on `model_channel(name)` for each model it serves:
a channel's messages are shared out among its receivers, so each request reaches one worker.

The admin's *Try a prompt* and API calls that keep no row ask a worker too (`WorkerRequest`): the
worker streams the reply's text back to a channel of the asker's own (`answer_try`), which nothing
else reads, and ends with the reply's usage. The attention view asks one for a pass over a finished
reply (`ask_attention`, `answer_attention`): the weights come back in one message.
"""

import asyncio
import secrets
import time

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from modelhub import serving
from modelhub.decoding.parts import ANSWER
from modelhub.options import ModelhubError, Usage


def model_channel(model_name):
    """The channel-layer channel that the workers serving this model receive requests on."""
    return f"modelhub.model.{model_name}"


class WorkerRequest:
    """A reply that a worker serving `spec` writes for a caller that keeps no row of it (the admin's
    *Try a prompt*, an API call whose key keeps nothing), read like a local Request: `chunks()`,
    then `usage`; `cancel()` stops it on the worker within a step.

    Its text comes back on a named channel of its own, not the process's "!" channel: abandoning
    its receive (the caller went away) touches nothing else of the process (see
    conversations/delivery/inbox.py). The worker hears a cancel on `<that channel>.cancel`."""

    def __init__(self, spec, messages, overrides, adapter=None):
        self.request = {
            "type": "prompt.try",
            "model": spec.name,
            "messages": messages,
            "overrides": overrides,
            "adapter": adapter.name if adapter else "",
            "reply_to": f"modelhub.try.{secrets.token_hex(8)}",
        }
        self.model_name = spec.name
        self.usage = None
        self.cancelled = False

    async def chunks(self, min_interval=0.0):
        """The reply's answer as the worker sends it (it paces itself); ModelhubError if none answers or it fails."""
        async for part, text in self.pieces(min_interval):
            if part == ANSWER:
                yield text

    async def pieces(self, min_interval=0.0):
        """(part, text) as the worker sends them: its reasoning and its answer (decoding/parts.py)."""
        layer = get_channel_layer()
        timeout = settings.MODELHUB_WORKER_TIMEOUT_SECONDS
        reply_to = self.request["reply_to"]
        await layer.send(model_channel(self.model_name), {**self.request, "deadline": time.time() + timeout})
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(reply_to), timeout)
            except TimeoutError:
                raise ModelhubError(
                    f"no model worker serving {self.model_name} answered within {timeout:g} s", code="no_model_worker"
                ) from None
            if message["type"] == "prompt.error":
                raise ModelhubError(message["message"], code=message["code"])
            if message["type"] == "prompt.end":
                self.usage = Usage(**message["usage"])
                return
            yield message.get("part", ANSWER), message["text"]

    def cancel(self):
        if not self.cancelled:
            self.cancelled = True
            asyncio.ensure_future(
                get_channel_layer().send(self.request["reply_to"] + ".cancel", {"type": "prompt.cancel"})
            )


async def answer_try(message):
    """In a worker: generate the asked reply and send its text back, chunk by chunk (then the end or the error)."""
    layer = get_channel_layer()
    reply_to = message["reply_to"]
    request = None
    try:
        spec = await database_sync_to_async(serving.get_spec)(message["model"])
        adapter = (
            await database_sync_to_async(serving.get_adapter)(spec, message["adapter"]) if message["adapter"] else None
        )
        request = serving.start(spec, message["messages"], message["overrides"], adapter=adapter)
        cancelling = asyncio.ensure_future(_cancel_on_request(layer, reply_to + ".cancel", request))
        async for part, text in request.pieces(settings.CHAT_STREAM_INTERVAL_SECONDS):
            await layer.send(reply_to, {"type": "prompt.chunk", "part": part, "text": text})
    except ModelhubError as exc:
        await layer.send(reply_to, {"type": "prompt.error", "code": exc.code, "message": exc.message})
        return
    finally:
        if request is not None:
            request.cancel()  # ended already, or the channel failed: stop generating
            cancelling.cancel()
    await layer.send(reply_to, {"type": "prompt.end", "usage": request.usage.as_dict()})


async def _cancel_on_request(layer, channel, request):
    """Cancel `request` when its asker says so on `channel` (a named channel of this request alone)."""
    await layer.receive(channel)
    request.cancel()


def ask_attention(spec, messages, reply, adapter=None, prompt_options=None):
    """The Attention (modelhub/backends/attention.py) of one pass over a finished reply, computed by a worker serving
    `spec`, for a web process that loads no model; ModelhubError if none answers or it fails. From a
    sync view's thread."""
    return async_to_sync(_ask_attention)(spec.name, messages, reply, adapter.name if adapter else "", prompt_options)


async def _ask_attention(model_name, messages, reply, adapter_name, prompt_options):
    layer = get_channel_layer()
    reply_to = f"modelhub.backends.attention.{secrets.token_hex(8)}"
    offered = settings.MODELHUB_WORKER_TIMEOUT_SECONDS
    await layer.send(
        model_channel(model_name),
        {
            "type": "attention.ask",
            "model": model_name,
            "messages": messages,
            "reply": reply,
            "adapter": adapter_name,
            "prompt_options": prompt_options or {},
            "reply_to": reply_to,
            "deadline": time.time() + offered,
        },
    )
    try:  # a worker takes it at once; then it may load the model first
        message = await asyncio.wait_for(layer.receive(reply_to), offered)
        if message["type"] == "attention.taken":
            message = await asyncio.wait_for(layer.receive(reply_to), serving.ATTENTION_WAIT_SECONDS)
    except TimeoutError:
        raise ModelhubError(
            f"no model worker serving {model_name} answered in time; try again in a while", code="no_model_worker"
        ) from None
    if message["type"] == "attention.error":
        raise ModelhubError(message["message"], code=message["code"])
    from modelhub.backends.attention import Attention  # torch: only for a page that shows attention

    return Attention.from_message(message)


async def answer_attention(message):
    """In a worker: the asked pass on this process's model (loaded if it is not), sent back in one message."""
    layer = get_channel_layer()
    await layer.send(message["reply_to"], {"type": "attention.taken"})
    try:
        spec = await database_sync_to_async(serving.get_spec)(message["model"])
        adapter = (
            await database_sync_to_async(serving.get_adapter)(spec, message["adapter"]) if message["adapter"] else None
        )
        # Not in the database thread: the pass (and a load) takes a while, and the replies' saves go on meanwhile.
        attention = await asyncio.to_thread(
            serving.attention, spec, message["messages"], message["reply"], adapter, message.get("prompt_options")
        )
    except ModelhubError as exc:
        await layer.send(message["reply_to"], {"type": "attention.error", "code": exc.code, "message": exc.message})
        return
    await layer.send(message["reply_to"], {"type": "attention.result", **attention.as_message()})
