"""Serving many models and adapters: LoRA hot-swap on a shared base, quantized loads,
the memory budget (LRU) and idle unloading. Real peft and bitsandbytes on tiny models."""

import logging
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from django.db import OperationalError, connection
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from modelhub import api
from modelhub.backends.local import ScriptedBackend
from modelhub.models import Adapter, ModelSpec
from modelhub.options import ModelhubError, ModelLoadError
from modelhub.registry import Registry, registry
from tests import ROOT
from tests.adapters import make_tiny_adapter
from tests.waiting import wait_until

HELLO = [{"role": "user", "content": "hello there, how are you doing today?"}]
GREEDY = {"temperature": 0, "max_new_tokens": 16}


@pytest.fixture
def adapters(tiny_spec, adapter_dirs):
    return {
        name: Adapter.objects.create(name=name, base=tiny_spec, path=str(path)) for name, path in adapter_dirs.items()
    }


def reply(spec, adapter=None, messages=HELLO):
    request = api.start(spec, messages, GREEDY, adapter=adapter)
    text = "".join(request)
    return text, request.usage


def reference(tiny_model_dir, adapter_dir=None):
    """Greedy text from a freshly loaded model (with a freshly loaded PeftModel adapter)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    ids = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=16, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_adapter_switches_match_freshly_loaded_peft_models_token_for_token(
    tiny_spec, tiny_model_dir, adapters, adapter_dirs
):
    base_text, _ = reply(tiny_spec)
    alpha_text, _ = reply(tiny_spec, adapters["alpha"])
    beta_text, _ = reply(tiny_spec, adapters["beta"])
    alpha_again, _ = reply(tiny_spec, adapters["alpha"])
    base_again, _ = reply(tiny_spec)

    assert alpha_text == alpha_again == reference(tiny_model_dir, adapter_dirs["alpha"])
    assert beta_text == reference(tiny_model_dir, adapter_dirs["beta"])
    assert base_text == base_again == reference(tiny_model_dir)
    assert len({base_text, alpha_text, beta_text}) == 3  # the adapters really change the model


def test_switching_adapters_never_reloads_the_base(tiny_spec, adapters):
    for name in ["alpha", "beta", "alpha", None, "beta"]:
        reply(tiny_spec, adapters[name] if name else None)
    assert registry.load_counts["tiny"] == 1
    assert registry.status()["tiny"]["adapters"] == ["alpha", "beta"]


def test_an_adapter_for_another_base_fails_clearly_and_the_base_keeps_serving(db, tiny_spec, tmp_path, tiny_model_dir):
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=96,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    other.save_pretrained(tmp_path / "other-base")
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(other, config).save_pretrained(tmp_path / "foreign")
    foreign = Adapter.objects.create(name="foreign", base=tiny_spec, path=str(tmp_path / "foreign"))

    with pytest.raises(ModelLoadError, match="adapter 'foreign' does not fit this base model"):
        reply(tiny_spec, foreign)
    assert reply(tiny_spec)[0] == reference(tiny_model_dir)


def test_an_adapter_targeting_missing_modules_fails_clearly(db, tiny_spec, tmp_path, tiny_model_dir):
    gpt_like = Adapter.objects.create(
        name="gpt", base=tiny_spec, path=str(make_tiny_adapter(tiny_model_dir, tmp_path / "g", 3))
    )
    config_file = tmp_path / "g" / "adapter_config.json"
    config_file.write_text(config_file.read_text().replace('"q_proj"', '"c_attn"').replace('"v_proj"', '"c_proj"'))
    with pytest.raises(ModelLoadError, match="does not fit"):
        reply(tiny_spec, gpt_like)


def test_an_adapter_of_another_model_row_is_refused(db, tiny_spec, adapters):
    other = ModelSpec.objects.create(name="other", source="x", backend="scripted")
    with pytest.raises(ModelhubError, match="belongs to 'tiny', not 'other'"):
        api.start(other, HELLO, adapter=adapters["alpha"])


@pytest.mark.parametrize(
    "quantization, layer", [("8bit", "Linear8bitLt"), ("nf4", "Linear4bit"), ("fp4", "Linear4bit")]
)
def test_quantized_loads_generate_on_this_device(tiny_spec, quantization, layer):
    tiny_spec.quantization = quantization
    tiny_spec.save()
    text, usage = reply(tiny_spec)
    assert usage.completion_tokens > 0
    status = registry.status()["tiny"]
    assert status["quantization"] == quantization
    backend = registry.worker(tiny_spec).backend
    assert type(backend.loaded.model.model.layers[0].self_attn.q_proj).__name__ == layer


LOAD_4BIT = """
import logging, sys
from modelhub.backends.loading import LoadSettings, load
load(LoadSettings(source=sys.argv[1], dtype="float32", device="cpu", quantization="nf4"))
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("another bitsandbytes warning")
"""


def test_a_4bit_load_on_cpu_says_nothing_of_the_kernels_package_and_other_bitsandbytes_warnings_pass(tiny_model_dir):
    # a fresh process: bitsandbytes says it once, when it is first imported
    done = subprocess.run(
        [sys.executable, "-c", LOAD_4BIT, str(tiny_model_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "gemm_4bit_forward" not in done.stderr and "pip install kernels" not in done.stderr
    assert "another bitsandbytes warning" in done.stderr


def test_lora_on_a_quantized_base_serves_the_adapter(tiny_spec, adapters):
    tiny_spec.quantization = "nf4"
    tiny_spec.save()
    base_text, _ = reply(tiny_spec)
    alpha_text, usage = reply(tiny_spec, adapters["alpha"])
    assert usage.completion_tokens > 0 and alpha_text != base_text
    assert registry.load_counts["tiny"] == 1


def test_4bit_halves_the_memory_of_8bit_and_float32_is_largest(tiny_spec):
    sizes = {}
    for quantization in ["none", "8bit", "nf4"]:
        tiny_spec.quantization = quantization
        tiny_spec.save()
        reply(tiny_spec)
        sizes[quantization] = registry.status()["tiny"]["memory_bytes"]
        registry.unload("tiny")
    assert sizes["none"] > sizes["8bit"] > sizes["nf4"]


def test_quantization_on_an_unsupported_device_is_a_clear_error(tiny_spec):
    tiny_spec.quantization = "8bit"
    tiny_spec.device = "mps"
    tiny_spec.save()
    with pytest.raises(ModelLoadError, match="runs on CPU and CUDA devices, not on 'mps'"):
        reply(tiny_spec)


def test_loading_past_the_model_budget_unloads_the_least_recently_used(tiny_spec, tiny_model_dir, settings):
    settings.MODELHUB_MAX_LOADED_MODELS = 2
    second = ModelSpec.objects.create(name="second", source=str(tiny_model_dir), dtype="float32", device="cpu")
    third = ModelSpec.objects.create(name="third", source=str(tiny_model_dir), dtype="float32", device="cpu")
    reply(tiny_spec)
    reply(second)
    reply(tiny_spec)  # tiny is now more recently used than second
    reply(third)
    assert sorted(registry.status()) == ["third", "tiny"]
    assert registry.load_counts["second"] == 1


def test_making_room_for_a_model_does_not_wait_for_the_evicted_one_to_be_freed(db, settings, monkeypatch):
    from modelhub.backends.local import ScriptedBackend

    settings.MODELHUB_MAX_LOADED_MODELS = 1
    freeing, freed, release = threading.Event(), threading.Event(), threading.Event()

    def slow_close(backend):  # as a big model's gc and CUDA cache clean-up would be
        freeing.set()
        release.wait(10)
        freed.set()

    monkeypatch.setattr(ScriptedBackend, "close", slow_close)
    first = ModelSpec.objects.create(name="first", backend="scripted", source="echo")
    second = ModelSpec.objects.create(name="second", backend="scripted", source="echo")
    "".join(api.start(first, HELLO))

    answer = "".join(api.start(second, HELLO))  # evicts the first: the caller does not wait for that

    assert answer == HELLO[0]["content"] and freeing.wait(5) and not freed.is_set()
    assert list(registry.status()) == ["second"]
    release.set()
    assert freed.wait(5)


def test_the_memory_budget_in_gb_unloads_older_models(tiny_spec, tiny_model_dir, settings):
    settings.MODELHUB_MAX_MEMORY_GB = 1e-9  # smaller than any model: only the newest may stay
    second = ModelSpec.objects.create(name="second", source=str(tiny_model_dir), dtype="float32", device="cpu")
    reply(tiny_spec)
    reply(second)
    assert list(registry.status()) == ["second"]


def test_idle_models_are_unloaded_by_the_reaper(tiny_spec, settings):
    settings.MODELHUB_IDLE_UNLOAD_SECONDS = 0.2
    registry.stop_reaper()  # a reaper started earlier may be sleeping its 30 s: start one that reads 0.2 s
    reply(tiny_spec)
    wait_until(lambda: "tiny" not in registry.status(), what="tiny unloaded")
    assert "tiny" not in registry.status()
    reply(tiny_spec)  # and it loads again on the next use
    assert registry.load_counts["tiny"] == 2


def database_down(execute, sql, params, many, context):
    """What every query meets while the database server is unreachable."""
    raise OperationalError("could not connect to server: Connection refused")


@pytest.mark.django_db(
    transaction=True
)  # autocommit, as in the reaper's thread: it closes its connection after each cycle
def test_the_reaper_logs_one_warning_while_the_database_is_down_and_reaps_again_once_it_answers(caplog):
    served = Registry()  # its own: no reaper thread of an earlier test shares its state
    served.install("scripted", ScriptedBackend())
    ModelSpec.objects.create(name="scripted", source="-", backend="scripted", enabled=False)  # an admin disabled it
    with caplog.at_level(logging.INFO, logger="modelhub.registry"):
        with connection.execute_wrapper(database_down):
            served.reap_once()
            served.reap_once()
            assert "scripted" in served.status()
        served.reap_once()
    assert "scripted" not in served.status()
    # this test's cycles only: the reaper thread an earlier test started logs here too
    cycles = [record for record in caplog.records if record.thread == threading.get_ident()]
    warnings = [record for record in cycles if record.levelno >= logging.WARNING]
    assert [(record.levelname, record.exc_info) for record in warnings] == [("WARNING", None)]
    assert "the database does not answer (could not connect to server" in warnings[0].getMessage()
    assert "the database answers again" in cycles[-1].getMessage()


def test_loading_one_model_does_not_block_replies_from_another(db, tiny_spec, tiny_model_dir, settings):
    import threading

    from modelhub.backends.local import ScriptedBackend

    release = threading.Event()
    slow = ModelSpec.objects.create(name="slow", source="-", backend="scripted")

    def slow_load(progress):
        progress("downloading: 1.0/4.0 MiB")
        release.wait(10)
        return ScriptedBackend(chunks=["late"])

    registry.install("slow", load=slow_load)
    waiting = api.start(slow, HELLO)
    started = time.monotonic()
    text, _ = reply(tiny_spec)
    assert text is not None and time.monotonic() - started < 5
    assert registry.status()["slow"]["state"] == "loading"
    from modelhub.admin import describe_runtime

    assert describe_runtime("slow").startswith("loading (")
    assert describe_runtime("slow").endswith("downloading: 1.0/4.0 MiB)")
    release.set()
    assert "".join(waiting) == "late"


def test_a_hub_model_missing_from_the_cache_while_offline_is_a_clear_error(db, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    spec = ModelSpec.objects.create(name="hub", source="example-org/never-downloaded-model", device="cpu")
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        reply(spec)
    assert registry.status()["hub"]["state"] == "failed"


def test_corrupt_weights_are_a_clear_load_error(db, tiny_model_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "corrupt")
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    spec = ModelSpec.objects.create(name="corrupt", source=str(tmp_path / "corrupt"), device="cpu")
    with pytest.raises(ModelLoadError, match="could not load the weights of"):
        reply(spec)


def test_download_progress_bars_report_their_state_as_text():
    from modelhub.backends.loading import progress_bar_class

    seen = []
    bar = progress_bar_class(seen.append)(total=4 * 2**20, desc="Downloading bytes", disable=True)
    bar.update(2**20)
    bar.update(2**20)
    assert seen[-1] == "Downloading bytes: 2.0/4.0 MiB"
