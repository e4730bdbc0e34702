"""Turn a model source (local folder or Hub repo id) into a tokenizer and a causal LM.

torch and transformers are imported here, inside functions, so that Django
start-up, migrations and page views never pay for them: a model is loaded on
first use, by the registry, in a worker thread.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

from modelhub.options import ModelLoadError

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass
class LoadedModel:
    model: object  # a transformers PreTrainedModel, in eval mode
    tokenizer: object
    device: str
    dtype: str
    context_length: int


def resolve_device(requested):
    import torch

    if requested in ("", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} was asked for, but no CUDA GPU is available")
    return requested


def resolve_dtype(requested, device):
    import torch

    if requested in _DTYPES:
        return getattr(torch, _DTYPES[requested])
    # auto: half precision on a GPU, full precision on a CPU (bf16 matmuls are slow on most CPUs)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load(source, revision="", dtype="auto", device="auto", context_length=None):
    """Load tokenizer and model; every failure becomes a ModelLoadError with a readable message."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    kwargs = {"revision": revision or None}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"could not load {source!r}: {exc}") from exc
    except ValueError as exc:  # e.g. a config that is not a causal LM
        raise ModelLoadError(f"{source!r} is not a causal language model: {exc}") from exc
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"{source!r} has no chat template; set one before chatting with it")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    limit = context_length or getattr(model.config, "max_position_embeddings", None) or 2048
    log.info("loaded %s on %s as %s (context %d)", source, device, torch_dtype, limit)
    return LoadedModel(model, tokenizer, device, str(torch_dtype).removeprefix("torch."), int(limit))


def load_local_for_generation(path: Path):
    """Load a saved folder in float32 on CPU (used to show samples after training)."""
    loaded = load(str(path), dtype="float32", device="cpu")
    return loaded.model, loaded.tokenizer
