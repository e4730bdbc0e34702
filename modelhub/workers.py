"""Model worker processes, modelhub's side: the channels they listen on, and a prompt tried on one.

With MODELHUB_WORKERS on, the models live in `manage.py modelhub_worker` processes and the web
processes load none (conversations/model_worker.py runs the worker, conversations/handoff.py
hands chat replies to it). A worker receives on `model_channel(name)` for each model it serves:
a channel's messages are shared out among its receivers, so each request reaches one worker.

The admin's *Try a prompt* asks a worker too (`try_prompt`): the worker streams the reply's
text back to a channel of the asker's own (`answer_try`), which nothing else reads.
"""

import asyncio
import secrets
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from modelhub import api
from modelhub.options import ModelhubError


def model_channel(model_name):
    """The channel-layer channel that the workers serving this model receive requests on."""
    return f"modelhub.model.{model_name}"


async def try_prompt(spec, messages, overrides, adapter=None):
    """A short reply from a worker serving `spec`, as text chunks; ModelhubError if none answers or it fails."""
    layer = get_channel_layer()
    # A named channel of its own, not the process's "!" channel: abandoning its receive (the page was
    # closed) touches nothing else of the process (see conversations/inbox.py).
    reply_to = f"modelhub.try.{secrets.token_hex(8)}"
    timeout = settings.MODELHUB_WORKER_TIMEOUT_SECONDS
    await layer.send(model_channel(spec.name), {
        "type": "prompt.try", "model": spec.name, "messages": messages, "overrides": overrides,
        "adapter": adapter.name if adapter else "", "reply_to": reply_to, "deadline": time.time() + timeout})
    while True:
        try:
            message = await asyncio.wait_for(layer.receive(reply_to), timeout)
        except TimeoutError:
            raise ModelhubError(f"no model worker serving {spec.name} answered within {timeout:g} s",
                                code="no_model_worker") from None
        if message["type"] == "prompt.error":
            raise ModelhubError(message["message"], code=message["code"])
        if message["type"] == "prompt.end":
            return
        yield message["text"]


async def answer_try(message):
    """In a worker: generate the asked reply and send its text back, chunk by chunk (then the end or the error)."""
    layer = get_channel_layer()
    reply_to = message["reply_to"]
    request = None
    try:
        spec = await database_sync_to_async(api.get_spec)(message["model"])
        adapter = await database_sync_to_async(api.get_adapter)(spec, message["adapter"]) if message["adapter"] else None
        request = api.start(spec, message["messages"], message["overrides"], adapter=adapter)
        async for text in request.chunks(settings.CHAT_STREAM_INTERVAL_SECONDS):
            await layer.send(reply_to, {"type": "prompt.chunk", "text": text})
    except ModelhubError as exc:
        await layer.send(reply_to, {"type": "prompt.error", "code": exc.code, "message": exc.message})
        return
    finally:
        if request is not None:
            request.cancel()  # ended already, or the channel failed: stop generating
    await layer.send(reply_to, {"type": "prompt.end"})
