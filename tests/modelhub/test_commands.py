"""Management commands: chat, ensure_admin, ensure_builtin_model, train_default_model."""

import json
import re
import shutil
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from modelhub import api
from modelhub.models import ModelSpec
from modelhub.training.builtin import is_validation
from tests.adapters import make_tiny_adapter


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_chat_streams_the_same_reply_as_the_api(tiny_spec):
    out, err = run("chat", "--model", "tiny", "--temperature", "0", "--max-new-tokens", "12", "hello there")
    expected = "".join(
        api.start(tiny_spec, [{"role": "user", "content": "hello there"}], {"temperature": 0, "max_new_tokens": 12})
    )
    assert out.strip() == expected.strip() and expected.strip()
    assert re.search(r"\[\d+ tokens, first after [\d.]+s, [\d.]+s, (stop|length)\]", err)


def test_chat_with_an_unknown_model_is_a_clear_error(tiny_spec):
    with pytest.raises(CommandError, match="no enabled model named 'nope'"):
        run("chat", "--model", "nope", "hi")


def test_chat_with_bad_options_is_a_clear_error(tiny_spec):
    with pytest.raises(CommandError, match="temperature must be between 0 and 2"):
        run("chat", "--temperature", "5", "hi")


def test_ensure_admin_prints_a_generated_password_once(db):
    out, _ = run("ensure_admin")
    password = re.search(r"password: (\S+)", out).group(1)
    assert len(password) >= 16
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    again, _ = run("ensure_admin")
    assert "password" not in again
    assert get_user_model().objects.count() == 1


def test_ensure_builtin_model_registers_it_as_the_default(db, settings, tmp_path, tiny_model_dir):
    settings.MODELHUB_BUILTIN_DIR = tmp_path
    settings.BASE_DIR = tmp_path.parent
    shutil.copytree(tiny_model_dir, tmp_path / "chitchat")
    run("ensure_builtin_model")
    run("ensure_builtin_model")
    spec = ModelSpec.objects.get()
    assert spec.name == "chitchat" and spec.is_default and spec.local_path == tmp_path / "chitchat"
    request = api.start(spec, [{"role": "user", "content": "hi"}], {"max_new_tokens": 4})
    list(request)
    assert request.usage.completion_tokens > 0


def test_ensure_builtin_model_without_the_files_says_how_to_make_them(db, settings, tmp_path):
    settings.MODELHUB_BUILTIN_DIR = tmp_path
    with pytest.raises(CommandError, match="train_default_model"):
        run("ensure_builtin_model")


@pytest.mark.slow
def test_train_default_model_runs_end_to_end_on_a_small_slice(db, tmp_path):
    report = tmp_path / "report.json"
    out, _ = run(
        "train_default_model",
        "--output",
        str(tmp_path / "model"),
        "--limit-conversations",
        "60",
        "--vocab-size",
        "400",
        "--hidden-size",
        "32",
        "--intermediate-size",
        "64",
        "--num-layers",
        "2",
        "--num-heads",
        "2",
        "--block-size",
        "64",
        "--batch-size",
        "4",
        "--max-steps",
        "30",
        "--eval-every",
        "10",
        "--eval-blocks",
        "4",
        "--warmup-steps",
        "5",
        "--no-progress",
        "--report",
        str(report),
    )
    result = json.loads(report.read_text())
    assert result["steps"] == 30 and len(result["history"]) == 3
    assert result["history"][-1]["val_bpb"] < result["history"][0]["val_bpb"]
    assert 0 < result["val_bpb"] < 10
    assert f"{result['val_bpb']:.4f} bits per byte" in out
    assert out.count("  model: ") == 3
    spec = ModelSpec.objects.create(name="trained", source=str(tmp_path / "model"), dtype="float32", device="cpu")
    request = api.start(spec, [{"role": "user", "content": "hello"}], {"max_new_tokens": 5})
    list(request)
    assert request.usage.completion_tokens > 0 and request.usage.prompt_tokens > 0


@pytest.mark.slow
def test_training_stops_early_when_held_out_loss_stops_improving(tmp_path):
    from modelhub.training.builtin import TrainConfig, train

    config = TrainConfig(
        vocab_size=300,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        block_size=32,
        batch_size=2,
        learning_rate=0.0,
        max_steps=100,
        eval_every=2,
        eval_blocks=2,
        patience=2,
        limit_conversations=30,
    )
    result = train(config, tmp_path, log=lambda *_: None)
    assert result.stopped_early and result.steps == 6 and result.best_step == 2


def test_the_held_out_split_is_stable_and_by_conversation():
    ids = [f"conv-{i}" for i in range(2000)]
    first = [i for i in ids if is_validation(i, 0.05)]
    assert first == [i for i in ids if is_validation(i, 0.05)]
    assert 60 < len(first) < 140


@pytest.mark.slow
def test_training_can_continue_from_a_saved_model_keeping_its_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from modelhub.training.builtin import TrainConfig, train

    tiny = dict(
        vocab_size=300,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        block_size=32,
        batch_size=2,
        eval_every=5,
        eval_blocks=2,
        limit_conversations=30,
        warmup_steps=2,
    )
    first = train(TrainConfig(max_steps=10, **tiny), tmp_path / "first", log=lambda *_: None)
    second = train(
        TrainConfig(max_steps=10, init_from=str(tmp_path / "first"), **tiny), tmp_path / "second", log=lambda *_: None
    )
    assert second.history[0]["val_bpb"] < first.history[0]["val_bpb"]  # it starts where the first left off
    before = AutoTokenizer.from_pretrained(tmp_path / "first")
    after = AutoTokenizer.from_pretrained(tmp_path / "second")
    assert before.get_vocab() == after.get_vocab()


def test_modelhub_add_checks_the_source_then_lists_it(db, tiny_model_dir, tmp_path):
    out, _ = run("modelhub", "add", "tiny2", str(tiny_model_dir), "--quantization", "8bit", "--default")
    assert "checked: llama (LlamaForCausalLM)" in out
    with pytest.raises(CommandError, match="does not exist"):
        run("modelhub", "add", "ghost", str(tmp_path / "ghost"))
    listing, _ = run("modelhub", "list")
    assert "tiny2" in listing and "[8bit, auto, auto]" in listing and "default" in listing
    assert "ghost" not in listing


def test_modelhub_load_reports_where_and_how_big(db, tiny_spec):
    out, _ = run("modelhub", "load", "tiny")
    assert re.search(r"tiny: loaded on cpu, float32, none, [\d.]+ MiB", out)


def test_modelhub_unload_disables_the_model_and_servers_drop_it(db, tiny_spec):
    from modelhub.registry import registry

    registry.worker(tiny_spec)
    run("modelhub", "unload", "tiny")
    tiny_spec.refresh_from_db()
    assert not tiny_spec.enabled and "tiny" not in registry.status()
    registry.worker(tiny_spec)  # as if another process still had it loaded
    assert registry.unload_disabled() == ["tiny"]


def test_modelhub_test_streams_with_an_adapter(db, tiny_spec, tiny_model_dir, tmp_path):
    make_tiny_adapter(tiny_model_dir, tmp_path / "a", 7)
    run("modelhub", "add-adapter", "tiny", "style", str(tmp_path / "a"))
    out, err = run("modelhub", "test", "tiny", "hello", "--adapter", "style", "--max-new-tokens", "8")
    assert out.strip() and re.search(r"\[\d+ tokens in [\d.]+s", err)
    with pytest.raises(CommandError, match="no enabled adapter named 'nope'"):
        run("modelhub", "test", "tiny", "--adapter", "nope")
