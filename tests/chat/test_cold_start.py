"""No cold first reply: models a server's first replies need load when it starts (`api.preload`),
and a reply that still waits for its model's load says so (`status` frames) until its first chunk.

The live side (a real daphne loading the built-in model with no chat request) is in
tests/chat/test_cold_start_live.py; the page showing the status, in tests/browser/test_reconnect_page.py.
"""

import threading

import pytest
from asgiref.sync import sync_to_async

from modelhub import api
from modelhub.admin import describe_runtime
from modelhub.backends import loading
from modelhub.backends.local import ScriptedBackend
from modelhub.models import ModelSpec
from modelhub.registry import registry
from tests.factories import install_scripted
from tests.sockets import frames_until, messages_of, open_socket
from tests.waiting import wait_until


def scripted_spec(name, **fields):
    return ModelSpec.objects.create(name=name, backend=ModelSpec.Backend.SCRIPTED, source="echo", **fields)


def wait_until_loaded(name, timeout=30):
    wait_until(lambda: registry.status()[name]["state"] != "loading", timeout=timeout, what=f"{name} loaded")
    return registry.status()[name]["state"]


class GatedLoad:
    """A backend load that reports its progress and waits at a gate: a model that takes its time to load."""

    def __init__(self, chunks, progress="loading weights"):
        self.chunks = chunks
        self.progress = progress
        self.gate = threading.Event()
        self.thread = None

    def __call__(self, progress):
        self.thread = threading.current_thread().name
        progress(self.progress)
        self.gate.wait(30)
        return ScriptedBackend(chunks=self.chunks)


@pytest.fixture
def gated():
    """Makes gated loads; every gate opens when the test ends (a closing worker waits for its load)."""
    loads = []

    def install(name, chunks=("ok",), progress="loading weights"):
        load = GatedLoad(list(chunks), progress)
        loads.append(load)
        registry.install(name, load=load)
        return load

    yield install
    for load in loads:
        load.gate.set()


# --- preload -----------------------------------------------------------------------


def test_preload_loads_the_default_model_and_those_marked_load_at_start_and_no_other(db):
    scripted_spec("default", is_default=True)
    scripted_spec("marked", load_at_start=True)
    scripted_spec("plain")
    scripted_spec("marked-but-disabled", load_at_start=True, enabled=False)

    assert api.preload() == ["default", "marked"]
    assert set(registry.status()) == {"default", "marked"}
    assert wait_until_loaded("default") == wait_until_loaded("marked") == "ready"


def test_without_a_model_marked_default_preload_loads_the_one_that_serves_as_default(db, settings):
    scripted_spec("older")
    scripted_spec("named")
    settings.MODELHUB_DEFAULT_MODEL = "named"
    assert api.preload() == ["named"]
    assert set(registry.status()) == {"named"}


def test_preload_off_loads_nothing(db, settings):
    settings.MODELHUB_PRELOAD = False
    scripted_spec("default", is_default=True)
    scripted_spec("marked", load_at_start=True)
    assert api.preload() == []
    assert registry.status() == {}


def test_preload_with_no_model_registered_loads_nothing(db):
    assert api.preload() == []


def test_preload_loads_no_model_twice(db):
    scripted_spec("default", is_default=True)
    api.preload()
    wait_until_loaded("default")
    api.preload()
    assert registry.load_counts["default"] == 1


def test_preload_asks_for_no_more_models_than_may_be_loaded_at_once(db, settings):
    settings.MODELHUB_MAX_LOADED_MODELS = 2
    scripted_spec("default", is_default=True)
    for name in ("a", "b", "c"):
        scripted_spec(name, load_at_start=True)
    assert api.preload() == ["default", "a"]
    assert set(registry.status()) == {"default", "a"}


@pytest.mark.slow
def test_preload_returns_at_once_and_the_model_loads_in_its_worker_thread(tiny_spec, monkeypatch):
    threads = []
    real_load = loading.load

    def load(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(loading, "load", load)
    assert api.preload() == ["tiny"]
    assert wait_until_loaded("tiny") == "ready"
    assert threads == ["modelhub-tiny"]
    assert "".join(api.start(tiny_spec, [{"role": "user", "content": "hello"}], {"max_new_tokens": 3}))
    assert registry.load_counts["tiny"] == 1  # the reply used the preloaded model


def test_the_admin_runtime_column_shows_a_preloaded_model_loading_then_loaded(db, gated):
    scripted_spec("default", is_default=True)
    load = gated("default", progress="loading weights")
    api.preload()
    assert describe_runtime("default").startswith("loading (")
    assert describe_runtime("default").endswith(", loading weights)")
    load.gate.set()
    wait_until_loaded("default")
    assert describe_runtime("default").startswith("loaded")


def test_a_loading_model_reports_its_progress_and_a_loaded_one_none(db, gated):
    spec = scripted_spec("default", is_default=True)
    load = gated("default", progress="downloading: 1.0/4.0 MiB")
    seconds, progress = api.loading(spec)
    assert seconds >= 0 and progress == "downloading: 1.0/4.0 MiB"
    load.gate.set()
    wait_until_loaded("default")
    assert api.loading(spec) is None
    assert api.loading(scripted_spec("never-used")) is None


# --- a reply waiting for its model ------------------------------------------------


def is_status(frame):
    return frame["type"] == "status"


@pytest.mark.django_db(transaction=True)
async def test_a_reply_waiting_for_its_model_gets_status_frames_with_its_name_then_its_chunks(
    owner, conversation, gated
):
    await sync_to_async(scripted_spec)("slow", display_name="Slow Model", is_default=True)
    load = await sync_to_async(gated)("slow", chunks=["Hello", " world"], progress="loading weights")
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "Hi!"})
    waiting = await frames_until(socket, is_status)
    waiting += await frames_until(socket, is_status)  # refreshed while the load lasts
    load.gate.set()
    frames = await frames_until(socket, "done")

    _, reply = await messages_of(conversation)
    announced = [f for f in waiting if f["type"] == "message" and f["message_id"] == reply.pk]
    assert announced and waiting.index(announced[0]) < waiting.index(next(filter(is_status, waiting)))
    statuses = [f for f in waiting + frames if is_status(f)]
    assert len(statuses) >= 2
    for status in statuses:
        assert status["message_id"] == reply.pk
        assert status["text"].startswith("loading Slow Model… ") and status["text"].endswith(" s, loading weights")
    after_first_chunk = frames[[f["type"] for f in frames].index("chunk") :]
    assert not any(map(is_status, after_first_chunk))
    assert "".join(f["text"] for f in frames if f["type"] == "chunk") == "Hello world"
    assert (reply.status, reply.content) == ("complete", "Hello world")
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_page_that_connects_while_the_model_loads_gets_the_reply_then_its_status(owner, conversation, gated):
    await sync_to_async(scripted_spec)("slow", is_default=True)
    load = await sync_to_async(gated)("slow", chunks=["late"])
    first, _, _ = await open_socket(owner, conversation)
    await first.send_json_to({"type": "send", "content": "Hi!"})
    await frames_until(first, is_status)

    second, _, _ = await open_socket(owner, conversation)  # a reload, or a page that reconnected
    frames = await frames_until(second, is_status)
    assert frames[0]["type"] == "message" and frames[0]["status"] == "streaming"
    assert frames[-1]["message_id"] == frames[0]["message_id"] and frames[-1]["text"].startswith("loading slow… ")
    await second.send_json_to({"type": "sync"})
    frames = await frames_until(second, is_status)
    assert [f["type"] for f in frames if f["type"] in ("path", "message")][:2] == ["path", "message"]
    load.gate.set()
    frames = await frames_until(second, "done")
    assert "".join(f["text"] for f in frames if f["type"] == "chunk") == "late"
    await first.disconnect()
    await second.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_reply_whose_model_is_loaded_sends_no_status(owner, conversation):
    await sync_to_async(install_scripted)(["quick"])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "Hi!"})
    frames = await frames_until(socket, "done")
    assert not any(map(is_status, frames))
    await socket.disconnect()
