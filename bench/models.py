"""The models the serving benches run: the built-in one, and a model the size teams actually run.

The built-in model (6M parameters) spends a decode step mostly in Python and small
ops; a model of a realistic size spends it in matmuls and attention over its keys
and values. So every serving bench also runs `smol_shape()`: a random-weight
LlamaForCausalLM with SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads / 3 KV
heads, intermediate 1536, vocabulary 49152, tied embeddings), made here from a
config, saved once under ~/.cache/chatsite/bench-models and reused; nothing is
downloaded. Random weights write nonsense, so the benches fix the reply's length
(`ignore_eos`); the speed of a step does not depend on the weights' values.

Its tokenizer is the built-in one's byte-level BPE with the vocabulary filled up to
49152 entries (tokens no merge produces, each decoding to its own short text), so
every id the model can write decodes, in chatsite and in vLLM alike.

    .venv/bin/python bench/models.py      # makes it (once) and prints its folder
"""

import json
import os
import shutil
from pathlib import Path

from stream import ROOT

BUILTIN = ROOT / "modelhub" / "builtin" / "chitchat"
CACHE = Path(os.environ.get("CHATSITE_BENCH_MODELS", Path.home() / ".cache" / "chatsite" / "bench-models"))
SMOL_SHAPE = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def builtin():
    return BUILTIN


# The serving benches' --model choices: (a function that gives its folder, made on demand; the name both
# engines serve it under). float32 in both engines: this machine's CPU has no AVX-512 (bfloat16 is emulated).
SERVED = {
    "builtin": (builtin, "chitchat"),
    "smol135m": (lambda: smol_shape("float32"), "smol135m"),
}


def smol_shape(dtype="bfloat16"):
    """The folder of the 135M-shape model (made and saved the first time)."""
    folder = CACHE / f"smollm2-135m-shape-{dtype}"
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _tokenizer(partial, SMOL_SHAPE["vocab_size"])
    builtin_config = json.loads((BUILTIN / "config.json").read_text())
    torch.manual_seed(0)
    config = LlamaConfig(
        **SMOL_SHAPE,
        bos_token_id=builtin_config.get("bos_token_id"),
        eos_token_id=builtin_config["eos_token_id"],
        pad_token_id=builtin_config["pad_token_id"],
    )
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = config.eos_token_id
    model.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def _tokenizer(folder, size):
    """The built-in tokenizer, its vocabulary filled with unmerged tokens up to `size` ids."""
    for name in ("tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (BUILTIN / name).exists():
            shutil.copy(BUILTIN / name, folder / name)
    spec = json.loads((BUILTIN / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    taken = set(vocab.values()) | {token["id"] for token in spec["added_tokens"]}
    free = (i for i in range(size) if i not in taken)
    for n, i in zip(range(size - len(taken)), free):
        vocab[f"Ġfill{n}"] = i  # ('Ġ': a leading space in byte-level BPE)
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))


if __name__ == "__main__":
    print(smol_shape())
