"""What the rest of chatsite calls: pick a model, start a reply, read it.

    from modelhub import api
    spec = api.get_spec("chitchat")
    request = api.start(spec, [{"role": "user", "content": "Hello"}], {"temperature": 0})
    for text in request: print(text, end="")
    request.usage  # prompt/completion tokens, time to first token, duration, finish reason

Called from async code, iterate `request.chunks()` instead. A caller that saves something
first (a chat turn) reserves the reply before saving, so running replies make room for it:
`reservation = api.reserve()`, then `reservation.start(...)` or `reservation.release()`.
With `adapter=api.get_adapter(spec, "name")` the reply comes from that LoRA adapter on
the shared base model.
Nothing here imports torch; the model loads in its worker thread on first use.
"""

import asyncio

from django.conf import settings

from modelhub.arrivals import arrivals
from modelhub.engine import Request
from modelhub.models import Adapter, ModelSpec
from modelhub.options import ModelNotFound
from modelhub.registry import registry


def get_spec(name=None):
    """The enabled model with this name, or the default model when name is empty."""
    specs = ModelSpec.objects.enabled()
    spec = specs.filter(name=name).first() if name else specs.default()
    if spec is None:
        raise ModelNotFound(f"no enabled model named {name!r}" if name else "no model is registered")
    return spec


def options_for(spec, overrides=None):
    """The spec's defaults with the caller's overrides, validated."""
    return spec.default_options().merged(overrides or {}).validated(settings.MODELHUB_MAX_NEW_TOKENS_LIMIT)


def get_adapter(spec, name):
    """The enabled adapter of this base model with this name."""
    adapter = Adapter.objects.enabled().filter(base=spec, name=name).first()
    if adapter is None:
        raise ModelNotFound(f"model {spec.name!r} has no enabled adapter named {name!r}")
    return adapter


class Reservation:
    """A reply about to start: made before the caller saves what the reply answers.

    Running replies hold their next step for it (briefly, see modelhub.arrivals), so it
    starts at once and replies asked for together start together. `start()` it once, or
    `release()` it if the reply will not come (the turn was refused); either settles it,
    and settling twice does nothing.
    """

    def __init__(self):
        self._arrival = arrivals.expect()

    def start(self, spec, messages, overrides=None, adapter=None):
        """Queue the reply on the spec's worker (with an Adapter of that spec, or none); its Request.

        Called on an event loop, the Request is read with `async for text in request.chunks()`;
        anywhere else, with `for text in request`."""
        try:
            if adapter is not None and adapter.base_id != spec.pk:
                raise ModelNotFound(f"adapter {adapter.name!r} belongs to {adapter.base.name!r}, not {spec.name!r}")
            pair = (adapter.name, str(adapter.local_path)) if adapter is not None else None
            request = Request(list(messages), options_for(spec, overrides), loop=_running_loop(), adapter=pair,
                              arrival=self._arrival)
            return registry.worker(spec).submit(request)
        finally:
            self.release()

    def release(self):
        self._arrival.done()


def reserve():
    """Announce a reply before saving what it answers; see Reservation."""
    return Reservation()


def start(spec, messages, overrides=None, adapter=None):
    """Queue a reply at once (no turn to save first): `reserve().start(...)`."""
    return reserve().start(spec, messages, overrides, adapter=adapter)


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a thread or a command: the request is read by plain iteration
        return None
