"""Memory footprint of one model in float32, bfloat16, 8-bit and 4-bit NF4, and the cost of
serving LoRA adapters on a shared base, all measured side by side in one run.

Models: a Linear-heavy Llama built here (>= 90% of its parameters in Linear layers,
like any real LLM) and the built-in chat model. Each is loaded through
modelhub.backends.loading exactly as the server loads it; footprints are
`get_memory_footprint()` (parameters and buffers). Adapter switch: two LoRA
adapters on one loaded base; the time of a decode step that names a different
adapter than the step before (chatsite's per-request `adapter_names`, no
set_adapter) against a plain decode step, and against reloading the base.

Writes bench/results/memory.json and prints `nf4_footprint_ratio=<nf4/bf16>` last
(Linear-heavy model; target <= 0.35).

    .venv/bin/python bench/memory.py
"""

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BUILTIN = ROOT / "modelhub" / "builtin" / "chitchat"
VARIANTS = {
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "8bit": {"dtype": "bfloat16", "quantization": "8bit"},
    "nf4": {"dtype": "bfloat16", "quantization": "nf4", "compute_dtype": "bfloat16"},
}


def build_linear_heavy(folder, tokenizer_from):
    """A 4-layer, 1024-wide Llama (about 68M parameters, 99% in Linear layers)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=4,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    total = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"parameters": total, "linear_share": round(linear / total, 4)}


def footprints(folder):
    from modelhub.backends.loading import LoadSettings, load

    sizes = {}
    for name, options in VARIANTS.items():
        loaded = load(LoadSettings(str(folder), device="cpu", **options))
        sizes[name] = loaded.memory_bytes
        del loaded
    return sizes


def make_adapters(folder, out):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        config = LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(out / f"adapter{seed}")
        paths.append(out / f"adapter{seed}")
    return paths


def step_time(model, ids, rounds, adapter_for_step=None):
    """Median seconds of one decode step (a forward pass on the last token, with the KV cache)."""
    import torch

    times = []
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        for step in range(rounds):
            kwargs = {"adapter_names": [adapter_for_step(step)]} if adapter_for_step else {}
            started = time.perf_counter()
            model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=False, **kwargs)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def adapter_costs(folder, adapters, rounds=30):
    from modelhub.backends.loading import LoadSettings, attach_adapter, load

    settings = LoadSettings(str(folder), dtype="float32", device="cpu")
    started = time.perf_counter()
    loaded = load(settings)
    reload_seconds = time.perf_counter() - started
    plain = step_time(loaded.model, _prompt(loaded), rounds)
    for index, path in enumerate(adapters):
        attach_adapter(loaded, f"a{index}", str(path))
    switching = step_time(loaded.model, _prompt(loaded), rounds, adapter_for_step=lambda step: f"a{step % 2}")
    set_adapter = []
    for index in range(rounds):
        started = time.perf_counter()
        loaded.model.set_adapter(f"a{index % 2}")
        set_adapter.append(time.perf_counter() - started)
    return {
        "plain_decode_step_s": round(plain, 6),
        "switching_adapter_decode_step_s": round(switching, 6),
        "switch_step_over_plain_step": round(switching / plain, 3),
        "peft_set_adapter_s": round(statistics.median(set_adapter), 6),
        "base_reload_s": round(reload_seconds, 3),
    }


def _prompt(loaded):
    import torch

    from modelhub.prompts import render_prompt

    return torch.tensor([render_prompt(loaded.tokenizer, [{"role": "user", "content": "Hello! What did you do?"}])])


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    result = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        heavy = Path(tmp) / "linear-heavy"
        result["linear_heavy"] = build_linear_heavy(heavy, BUILTIN)
        for name, folder in [("linear_heavy", heavy), ("builtin", BUILTIN)]:
            sizes = footprints(folder)
            result.setdefault(name, {})["footprint_bytes"] = sizes
            result[name]["ratio_to_bf16"] = {k: round(v / sizes["bfloat16"], 4) for k, v in sizes.items()}
            print(f"{name}: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()))
        result["builtin"]["adapters"] = adapter_costs(BUILTIN, make_adapters(BUILTIN, Path(tmp)))
    print(f"adapter switch: {json.dumps(result['builtin']['adapters'])}")
    out = ROOT / "bench" / "results" / "memory.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"nf4_footprint_ratio={result['linear_heavy']['ratio_to_bf16']['nf4']:.4f}")


if __name__ == "__main__":
    main()
