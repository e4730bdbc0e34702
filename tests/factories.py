"""Rows and models the tests need, made through the app's own model methods and registry."""

from modelhub.backends.local import ScriptedBackend
from modelhub.models import ModelSpec
from modelhub.options import Usage
from modelhub.registry import registry


def install_scripted(chunks=None, delay=0.0, name="scripted"):
    """Register a scripted model (the default one) and serve it with a ScriptedBackend."""
    spec, _ = ModelSpec.objects.get_or_create(
        name=name, defaults={"backend": ModelSpec.Backend.SCRIPTED, "source": "scripted", "is_default": True}
    )
    backend = ScriptedBackend(chunks=chunks, delay=delay)
    registry.install(name, backend)
    return spec, backend


def add_reply(conversation, content, status="complete", spec=None, **usage):
    """An assistant answer at the end of the active branch, made through the model methods."""
    spec = spec or ModelSpec.objects.get_or_create(name="m", defaults={"source": "-", "backend": "scripted"})[0]
    reply = conversation.start_reply(spec, {})
    reply.finish(status, content, usage=Usage(**usage) if usage else None)
    return reply


def two_models():
    """Two scripted models, "left-model" (the default) and "right-model", each with its own answer."""
    left = ModelSpec.objects.create(name="left-model", source="-", backend="scripted", is_default=True)
    right = ModelSpec.objects.create(name="right-model", source="-", backend="scripted")
    registry.install("left-model", ScriptedBackend(chunks=["from", " left"], delay=0.02))
    registry.install("right-model", ScriptedBackend(chunks=["from", " right"], delay=0.02))
    return left, right


def make_comparison(conversation):
    """One question asked of both `two_models()` side by side (its answers not finished yet)."""
    left, right = two_models()
    return conversation.start_comparison("q", (left, None, {}), (right, None, {}))


def remote_spec(url, **fields):
    """The default model, served by an OpenAI-compatible server at `url`, with short timeouts."""
    return ModelSpec.objects.create(
        name="remote",
        backend=ModelSpec.Backend.REMOTE,
        server_url=url,
        is_default=True,
        **{"read_timeout": 0.5, "connect_timeout": 0.5, **fields},
    )
