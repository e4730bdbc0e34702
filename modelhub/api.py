"""What the rest of chatsite calls: pick a model, start a reply, read it.

    from modelhub import api
    spec = api.get_spec("chitchat")
    request = api.start(spec, [{"role": "user", "content": "Hello"}], {"temperature": 0})
    for text in request: print(text, end="")
    request.usage  # prompt/completion tokens, time to first token, duration, finish reason

From async code pass `loop=asyncio.get_running_loop()` and iterate `request.chunks()`.
Nothing here imports torch; the model loads in its worker thread on first use.
"""

from django.conf import settings

from modelhub.engine import Request
from modelhub.models import ModelSpec
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


def start(spec, messages, overrides=None, loop=None):
    """Queue a reply on the spec's worker and return its Request at once."""
    request = Request(list(messages), options_for(spec, overrides), loop=loop)
    return registry.worker(spec).submit(request)
