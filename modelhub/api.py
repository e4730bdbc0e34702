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
Nothing here imports torch; the model loads in its worker thread on first use, or when a
server starts (`preload`: the default model and those marked `load_at_start`).
"""

import asyncio
import logging

from django.conf import settings

from modelhub.arrivals import arrivals
from modelhub.engine import Request
from modelhub.models import Adapter, ModelSpec, pick_default
from modelhub.options import ModelNotFound
from modelhub.registry import registry

log = logging.getLogger(__name__)


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


def preload():
    """Start loading the default model and the enabled models marked `load_at_start`; their names.

    For a server (or a model worker) that starts: its first reply then need not wait for
    the load. Each model loads in its worker's thread (this returns at once, and never
    imports torch); one loaded or loading already is not loaded again. At most
    MODELHUB_MAX_LOADED_MODELS local models are asked for (the default first): loading
    more would only unload them again. Nothing when MODELHUB_PRELOAD is off. Reads the
    database: a database that is away or not migrated raises its DatabaseError.
    """
    if not settings.MODELHUB_PRELOAD:
        return []
    specs = list(ModelSpec.objects.enabled())
    default = pick_default(specs)
    wanted = [default] if default is not None else []
    wanted += [spec for spec in specs if spec.load_at_start and spec != default]
    names, local = [], 0
    for spec in wanted:
        if spec.backend != spec.Backend.REMOTE:
            if local == settings.MODELHUB_MAX_LOADED_MODELS:
                log.warning("not loading %s at start: MODELHUB_MAX_LOADED_MODELS=%d models are already loading",
                            spec.name, local)
                continue
            local += 1
        registry.worker(spec)
        names.append(spec.name)
    return names


def loading(spec):
    """While the spec's model loads: (seconds so far, its progress text, e.g. "loading weights"); else None."""
    return registry.loading(spec.name)


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
