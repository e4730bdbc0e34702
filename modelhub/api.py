"""What the rest of chatsite calls: pick a model, start a reply, read it.

    from modelhub import api
    spec = api.get_spec("chitchat")
    request = api.start(spec, [{"role": "user", "content": "Hello"}], {"temperature": 0})
    for text in request: print(text, end="")
    request.usage  # prompt/completion tokens, time to first token, duration, finish reason

From async code pass `loop=asyncio.get_running_loop()` and iterate `request.chunks()`.
With `adapter=api.get_adapter(spec, "name")` the reply comes from that LoRA adapter on
the shared base model.
Nothing here imports torch; the model loads in its worker thread on first use.
"""

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


def expect():
    """Announce a reply about to start (call before saving the turn); `.done()` if it will not.

    Running replies hold their next step for it (briefly), so it starts at once; the
    `start` that passes it as `arrival` settles it. See modelhub.arrivals.
    """
    return arrivals.expect()


def start(spec, messages, overrides=None, loop=None, adapter=None, arrival=None):
    """Queue a reply on the spec's worker (with an Adapter of that spec, or none) and return its Request.

    `arrival` (from `expect()`) is settled however this ends.
    """
    try:
        if adapter is not None and adapter.base_id != spec.pk:
            raise ModelNotFound(f"adapter {adapter.name!r} belongs to {adapter.base.name!r}, not {spec.name!r}")
        pair = (adapter.name, str(adapter.local_path)) if adapter is not None else None
        request = Request(list(messages), options_for(spec, overrides), loop=loop, adapter=pair, arrival=arrival)
        return registry.worker(spec).submit(request)
    finally:
        if arrival is not None:
            arrival.done()
