"""Shared fixtures. Users are named by role: `owner` owns the conversation under test,
`other_user` must never see it, `staff` may use the admin."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; set before huggingface_hub loads

import pytest
from channels.layers import channel_layers
from django.contrib.auth import get_user_model

from conversations.models import Conversation
from modelhub.backends.local import ScriptedBackend
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
    from modelhub.options import Usage

    spec = spec or ModelSpec.objects.get_or_create(name="m", defaults={"source": "-", "backend": "scripted"})[0]
    reply = conversation.start_reply(spec, {})
    reply.finish(status, content, usage=Usage(**usage) if usage else None)
    return reply


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


@pytest.fixture
def tiny_spec(db, tiny_model_dir):
    return ModelSpec.objects.create(
        name="tiny", source=str(tiny_model_dir), dtype="float32", device="cpu", is_default=True, temperature=0
    )
