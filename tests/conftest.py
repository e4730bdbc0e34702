"""Shared fixtures. Users are named by role: `owner` owns the conversation under test,
`other_user` must never see it, `staff` may use the admin. The tiny random Llama (`tiny_model_dir`,
`tiny_spec`) and the tiny Qwen3 that thinks and calls a tool (`thinking_model_dir`, `thinking_spec`)
are made once a session; `silent_server` and `closed_url` are addresses where a server
hangs or where nothing listens."""

import os
import socket
import threading
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; set before huggingface_hub loads

import pytest
from channels.layers import channel_layers
from django.contrib.auth import get_user_model

from conversations.models import Conversation
from modelhub.models import ModelSpec
from modelhub.registry import registry
from modelhub.training.builtin import train_tokenizer

TINY_CORPUS = [
    "hello there, how are you doing today?",
    "i am doing well, thanks for asking!",
    "what do you like to do on the weekend?",
    "i like to go hiking and read books.",
    "that sounds fun. where do you hike?",
] * 20


@pytest.fixture(autouse=True)
def _fresh_registry(settings):
    settings.CHAT_ORPHAN_GRACE_SECONDS = 0
    settings.CHAT_FLUSH_SECONDS = 0.1
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # `make test` runs the suite in two processes (pytest-xdist)
    if worker and settings.REDIS_URL:  # each process's test database counts conversations from 1: its own groups
        layer = settings.CHANNEL_LAYERS["default"]
        settings.CHANNEL_LAYERS = {"default": {**layer, "CONFIG": {**layer["CONFIG"], "prefix": f"asgi-{worker}"}}}
    yield
    registry.stop_reaper()  # it reads the database: not after this test's database is gone
    registry.unload_all()
    registry.load_counts.clear()
    # Each async test runs on an event loop of its own, and channels_redis keeps what a receive
    # holds (its lock) per layer instance: a server has one loop for life, a test suite does not,
    # so every test gets a fresh layer (the process's reply inbox starts afresh on it).
    channel_layers.backends.clear()


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("owner", password="owner-pass-123")


@pytest.fixture
def other_user(db):
    return get_user_model().objects.create_user("intruder", password="intruder-pass-123")


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("staff", password="staff-pass-123", is_staff=True)


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def conversation(owner):
    return Conversation.objects.create(owner=owner)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny Llama with a real BPE tokenizer and chat template, saved like a Hub model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = train_tokenizer(TINY_CORPUS, vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,  # bitsandbytes' 4-bit CPU kernels need rows of at least one 64-value block
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,  # tied random embeddings just echo the last prompt token
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def thinking_model_dir(tmp_path_factory, worker_id):
    """A tiny Qwen3 with TRL's qwen3 template, trained to think before it answers and to call a tool
    (tests/thinking.py). Its training takes half a minute: the test processes of one run (pytest-xdist)
    share it, the first to need it training it in their common folder while the others wait."""
    from filelock import FileLock

    from tests.thinking import make_thinking_model

    if worker_id == "master":  # one process
        return make_thinking_model(tmp_path_factory.mktemp("tiny-qwen3"))
    shared = tmp_path_factory.getbasetemp().parent / "tiny-qwen3"
    with FileLock(f"{shared}.lock"):
        if not shared.exists():
            partial = make_thinking_model(Path(f"{shared}.partial"))
            partial.rename(shared)
    return shared


@pytest.fixture
def thinking_spec(db, thinking_model_dir):
    return ModelSpec.objects.create(
        name="thinker", source=str(thinking_model_dir), dtype="float32", device="cpu", is_default=True, temperature=0
    )


@pytest.fixture
def tiny_spec(db, tiny_model_dir):
    return ModelSpec.objects.create(
        name="tiny", source=str(tiny_model_dir), dtype="float32", device="cpu", is_default=True, temperature=0
    )


# --- servers that are not what they should be (remote models, a channel layer) ---------------


@pytest.fixture
def silent_server():
    """Accepts connections and never says a word (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.fixture
def closed_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there any more
