"""Base-model and adapter requests in one batch: checking that a model mixes them right, and the
all-zero adapter that works around a server that does not.

Serving LoRA adapters on a shared base means one batch holds rows for the base and rows for
several adapters. chatsite's own engine applies each row's adapter alone (engine/model_runner.py). vLLM's CPU
build (0.32) does not: a base-model row batched with adapter rows gets an adapter applied (its LoRA
op maps "no adapter" to the last slot; vLLM PRs #48421 and #49656). The reply is then simply
wrong, with no error anywhere. Sending base requests as an adapter whose B matrices are zero
(LoRA adds B·A·x, so it adds nothing) gives every row a real slot: `write_zero_adapter` makes
one from any adapter of the model, and `ModelSpec.base_model_alias` sends base requests to it.

`mixed_batch_differences` is the check (`manage.py modelhub test NAME --mixed`): greedy replies
asked for together, base and adapters alternating, must equal the same requests asked alone.
"""

import json
import shutil
from pathlib import Path

from modelhub import serving
from modelhub.options import ModelhubError

PROMPTS = [
    "Tell me about your favourite season.",
    "What is a good way to start the day?",
    "How do you make a cup of tea?",
    "Say something about the sea.",
]


def mixed_batch_differences(spec, adapters, rounds=3, max_new_tokens=24):
    """Greedy requests for the base and each adapter, asked together and then one by one; returns
    [(who, prompt, together, alone)] for every reply that differed (empty: the model mixes right)."""
    options = {"temperature": 0, "max_new_tokens": max_new_tokens}
    choices = [("(base)", None)] + [(adapter.name, adapter) for adapter in adapters]
    cases = [(who, adapter, prompt) for _ in range(rounds) for prompt in PROMPTS for who, adapter in choices]
    started = [serving.start(spec, _ask(prompt), options, adapter=adapter) for _, adapter, prompt in cases]
    together = [_text(request) for request in started]
    alone = {
        (who, prompt): _text(serving.start(spec, _ask(prompt), options, adapter=adapter))
        for who, adapter in choices
        for prompt in PROMPTS
    }
    return [
        (who, prompt, text, alone[who, prompt])
        for (who, _, prompt), text in zip(cases, together)
        if text != alone[who, prompt]
    ]


def _ask(prompt):
    return [{"role": "user", "content": prompt}]


def _text(request):
    return "".join(request)


def write_zero_adapter(folder, out):
    """Copy the LoRA adapter in `folder` to `out` with every lora_B weight zeroed: the same modules and
    rank (so the server accepts it beside the others), and no effect on the base model's output."""
    import torch
    from safetensors.torch import load_file, save_file

    folder, out = Path(folder), Path(out)
    weights = folder / "adapter_model.safetensors"
    if not (folder / "adapter_config.json").is_file() or not weights.is_file():
        raise ModelhubError(
            f"{folder} is not a LoRA adapter folder (adapter_config.json and adapter_model.safetensors)"
        )
    tensors = load_file(str(weights))
    zeroed = {name: torch.zeros_like(t) if "lora_B" in name else t for name, t in tensors.items()}
    if not any("lora_B" in name for name in tensors):
        raise ModelhubError(f"{weights} holds no lora_B weights: not a LoRA adapter")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "adapter_config.json", out / "adapter_config.json")
    save_file(zeroed, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "adapter_config.json").read_text())
    return f"{out}: rank {config.get('r')}, {len(zeroed)} tensors, every lora_B zero"
