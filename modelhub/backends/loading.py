"""Turn a model source (local folder or Hub repo id) into a tokenizer and a causal LM.

Read top to bottom: where the files are, what they are (a causal LM with a
tokenizer and a chat template), how the weights are loaded (dtype, device,
optional bitsandbytes quantization), and how LoRA adapters are attached to a
loaded base. torch, transformers and peft are imported inside functions, so
Django start-up, migrations and page views never pay for them: a model is
loaded on first use, by the registry, in its worker thread. Every failure
becomes a ModelLoadError whose message says what is wrong and what to do.
"""

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from modelhub.options import ModelLoadError

log = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")


class _NoKernelsHubNotice(logging.Filter):
    """bitsandbytes (0.50), when first imported (by peft, transformers' quantizers or `quantization_config`)
    on a CPU with AVX512-BF16, tries Hugging Face's `kernels` package for a faster 4-bit matmul and logs
    "Failed to load CPU gemm_4bit_forward from kernels-community: ... pip install kernels ..." without it.
    That package downloads its kernels from the Hub at run time, which an offline install cannot do, so it
    is not installed: bitsandbytes then uses its own CPU kernel, and this one known line is dropped.
    Its other warnings pass."""

    def filter(self, record):
        return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


# on the logger itself, before anything here imports bitsandbytes: `manage.py chat` and the server stay quiet
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoKernelsHubNotice())


@dataclass(frozen=True)
class LoadSettings:
    source: str
    revision: str = ""
    dtype: str = "auto"
    device: str = "auto"
    quantization: str = "none"  # none, 8bit, nf4, fp4
    double_quant: bool = False
    compute_dtype: str = "auto"
    chat_template: str = ""
    context_length: int | None = None
    reply_parts: str = "auto"  # the response template its replies are split with: attach_response_template


@dataclass
class LoadedModel:
    model: object  # a transformers PreTrainedModel (a peft PeftModel once an adapter is attached)
    tokenizer: object
    device: str
    dtype: str
    context_length: int
    quantization: str = "none"
    adapters: dict = field(default_factory=dict)  # adapter name -> folder

    @property
    def is_peft(self):
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    @property
    def memory_bytes(self):
        """Parameters and buffers, the adapters' included (they are small)."""
        base = self.model.get_base_model() if self.is_peft else self.model
        return int(base.get_memory_footprint())


# --- where and what -----------------------------------------------------------


def _looks_like_path(source):
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()


def _hub_kwargs(settings):
    return {"revision": settings.revision or None}


def _explain_missing(source, exc):
    from huggingface_hub import constants

    if _looks_like_path(source):
        if not Path(source).expanduser().exists():
            return ModelLoadError(f"the folder {source} does not exist")
        return ModelLoadError(f"could not read a model from {source}: {exc}")
    if constants.HF_HUB_OFFLINE:
        return ModelLoadError(
            f"{source} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
            f"download it first (`hf download {source}`) or unset HF_HUB_OFFLINE"
        )
    return ModelLoadError(f"could not fetch {source} from the Hugging Face Hub: {exc}")


# What a Hub download fetches: configs, tokenizers, safetensors weights (not .bin, GGUF, ONNX...).
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.tiktoken", "*.txt", "tokenizer*"]


def fetch(settings: LoadSettings, progress=None):
    """The local folder to load from: the source itself, or the Hub snapshot in the local cache.

    A Hub download reports `progress(text)` as bytes arrive (the admin's runtime
    column shows it) and draws the usual progress bars on a terminal.
    """
    if _looks_like_path(settings.source):
        return settings.source
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(
            settings.source,
            revision=settings.revision or None,
            allow_patterns=HUB_FILES,
            local_files_only=constants.HF_HUB_OFFLINE,
            tqdm_class=progress_bar_class(progress) if progress else None,
        )
    except Exception as exc:  # offline and not cached, unknown repo, network down
        raise _explain_missing(settings.source, exc) from exc


def served_chat_template(settings: LoadSettings):
    """The chat template this model's prompts are rendered with once loaded, read without its weights:
    the override, else its tokenizer's, from files at hand only (a folder, or the Hub cache; nothing is
    downloaded). None when it cannot be known here."""
    if settings.chat_template:
        return settings.chat_template
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(settings.source, local_files_only=True, **_hub_kwargs(settings))
    except Exception:
        return None
    return tokenizer.chat_template


def progress_bar_class(progress):
    """A tqdm class that also reports its state as one line of text to `progress`."""

    class ReportingBar(tqdm):
        def __init__(self, *args, **kwargs):
            # Kept here too: a disabled tqdm (no terminal) keeps neither its label nor its count.
            self.label, self.done, self.total = kwargs.get("desc") or "downloading", 0, kwargs.get("total")
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            self.done += n or 0
            total = f"/{self.total / 2**20:.1f}" if self.total else ""
            progress(f"{self.label}: {self.done / 2**20:.1f}{total} MiB")
            return super().update(n)

    return ReportingBar


def inspect_source(settings: LoadSettings):
    """Check, without loading weights, that the source is a causal LM with a usable tokenizer.

    Returns a short description; raises ModelLoadError naming the problem.
    """
    config, tokenizer = _config_and_tokenizer(settings)
    return f"{config.model_type} ({', '.join(config.architectures or [])}), vocabulary {len(tokenizer)}"


def _config_and_tokenizer(settings):
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(settings.source, **_hub_kwargs(settings))
    except (OSError, ValueError) as exc:
        raise _explain_missing(settings.source, exc) from exc
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    architectures = config.architectures or []
    # A saved BertModel has a causal-capable model_type but is an encoder: trust the saved class first.
    is_causal = (
        any(a in causal_classes for a in architectures)
        if architectures
        else config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )
    if not is_causal:
        kind = ", ".join(architectures or [config.model_type])
        raise ModelLoadError(f"{settings.source} is a {kind} model, not a causal language model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(settings.source, **_hub_kwargs(settings))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{settings.source} has no usable tokenizer: {exc}") from exc
    if not (settings.chat_template or tokenizer.chat_template):
        raise ModelLoadError(f"{settings.source} has no chat template: set a chat template override for it")
    return config, tokenizer


# --- how ----------------------------------------------------------------------


def resolve_device(requested):
    import torch

    if requested in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} was asked for, but no CUDA GPU is available")
    return requested


def resolve_dtype(requested, device):
    import torch

    if requested in _DTYPES:
        return getattr(torch, requested)
    # auto: half precision on a GPU, full precision on a CPU (bf16 matmuls are slow on most CPUs)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(settings: LoadSettings, device):
    """A BitsAndBytesConfig, or None. bitsandbytes >= 0.47 runs 8-bit and 4-bit on x86-64 CPUs too."""
    if settings.quantization in ("", "none"):
        return None
    if not (device == "cpu" or device.startswith("cuda")):
        raise ModelLoadError(f"bitsandbytes quantization runs on CPU and CUDA devices, not on {device!r}")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ModelLoadError(f"quantization needs bitsandbytes: {exc}") from exc
    if settings.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if settings.quantization not in ("nf4", "fp4"):
        raise ModelLoadError(f"unknown quantization {settings.quantization!r}")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.quantization,
        bnb_4bit_use_double_quant=settings.double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(settings.compute_dtype, device),
    )


def load(settings: LoadSettings, progress=None):
    """Load tokenizer and weights; the model comes back in eval mode on its device."""

    from transformers import AutoModelForCausalLM

    settings = replace(settings, source=fetch(settings, progress), revision="")
    if progress:
        progress("loading weights")
    _, tokenizer = _config_and_tokenizer(settings)
    device = resolve_device(settings.device)
    torch_dtype = resolve_dtype(settings.dtype, device)
    quantization = quantization_config(settings, device)
    if settings.chat_template:
        tokenizer.chat_template = settings.chat_template
    attach_response_template(tokenizer, settings.reply_parts)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = AutoModelForCausalLM.from_pretrained(
            settings.source,
            dtype=torch_dtype,
            device_map={"": device},  # weights go straight to the device (quantized ones cannot move later)
            quantization_config=quantization,
            **_hub_kwargs(settings),
        )
    except Exception as exc:  # corrupt safetensors, bitsandbytes refusing a layout, out of memory...
        raise ModelLoadError(f"could not load the weights of {settings.source}: {exc}") from exc
    model.eval()
    limit = settings.context_length or getattr(model.config, "max_position_embeddings", None) or 2048
    log.info("loaded %s on %s as %s (quantization %s)", settings.source, device, torch_dtype, settings.quantization)
    return LoadedModel(
        model, tokenizer, device, str(torch_dtype).removeprefix("torch."), int(limit), settings.quantization
    )


# --- a reply's parts -----------------------------------------------------------

# TRL's response templates for the chat templates it ships (trl.chat_template_utils): the admin may name
# one for a model whose tokenizer carries none and whose chat template TRL does not recognise.
RESPONSE_TEMPLATES = (
    "qwen3",
    "qwen3_5",
    "deepseek_r1_distill",
    "gptoss",
    "glm4moe",
    "gemma4",
    "nemotron_3",
    "llama3",
    "lfm2_2_5",
)


def attach_response_template(tokenizer, choice):
    """Set the tokenizer's `response_template` (how a reply splits into reasoning, answer and tool calls:
    decoding/parts.py). "auto": the tokenizer's own if it has one, else TRL's for a chat template TRL
    knows, else none (every reply is all answer); "none": never split; a name of RESPONSE_TEMPLATES:
    that one. Returns the template set (or None)."""
    from trl import chat_template_utils

    if choice == "none":
        tokenizer.response_template = None
    elif choice in RESPONSE_TEMPLATES:
        tokenizer.response_template = getattr(chat_template_utils, f"{choice}_template")
    elif getattr(tokenizer, "response_template", None) is None:
        try:
            chat_template_utils.add_response_schema(tokenizer)
        except ValueError:  # a chat template TRL does not know: the replies have one part
            tokenizer.response_template = None
    return tokenizer.response_template


# --- adapters -----------------------------------------------------------------


def attach_adapter(loaded: LoadedModel, name, path):
    """Load a LoRA adapter onto the shared base; the base weights are neither copied nor reloaded."""
    from peft import PeftModel

    folder = Path(path)
    if not (folder / "adapter_config.json").exists():
        raise ModelLoadError(f"adapter {name!r}: {folder} has no adapter_config.json")
    # Check before peft touches the model: a failed injection would leave stray layers in the base.
    problem = adapter_misfit(loaded.model, folder)
    if problem:
        raise ModelLoadError(f"adapter {name!r} does not fit this base model: {problem}")
    detach_adapter(loaded, name)  # a changed folder replaces the adapter of that name
    try:
        if loaded.is_peft:
            loaded.model.load_adapter(str(folder), adapter_name=name)
        else:
            loaded.model = PeftModel.from_pretrained(loaded.model, str(folder), adapter_name=name)
            loaded.model.eval()
    except (RuntimeError, ValueError, KeyError) as exc:  # shape mismatch, missing target modules
        raise ModelLoadError(f"adapter {name!r} does not fit this base model: {exc}") from exc
    loaded.adapters[name] = str(folder)


def check_adapter(settings: LoadSettings, folder):
    """Check that a LoRA folder fits a base model without loading the base's weights.

    The base is built on the meta device from its config: module names and shapes,
    no memory. Raises ModelLoadError naming the problem.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        raise ModelLoadError(f"{folder} has no adapter_config.json: it is not a peft adapter folder")
    try:
        config = AutoConfig.from_pretrained(settings.source, **_hub_kwargs(settings))
    except (OSError, ValueError) as exc:
        raise _explain_missing(settings.source, exc) from exc
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    problem = adapter_misfit(skeleton, folder)
    if problem:
        raise ModelLoadError(f"this adapter does not fit {settings.source}: {problem}")


def adapter_misfit(model, folder):
    """Why this LoRA folder cannot apply to `model` (missing target modules, wrong shapes), or ""."""

    from peft import PeftConfig
    from safetensors import safe_open

    config = PeftConfig.from_pretrained(str(folder))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = dict(base.named_modules())
    targets = config.target_modules
    if isinstance(targets, str):
        matched = [n for n in modules if re.fullmatch(targets, n)]
    else:
        matched = [n for n in modules if n.rsplit(".", 1)[-1] in set(targets or ())]
    if not matched:
        return f"none of its target modules {sorted(targets) if not isinstance(targets, str) else targets} exist"
    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        return ""  # a .bin adapter: peft will check the shapes itself
    with safe_open(str(weights), framework="pt") as tensors:
        for key in tensors.keys():  # noqa: SIM118 - safetensors' handle iterates no keys itself
            found = re.match(r"(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight$", key)
            if not found:
                continue
            module = modules.get(found.group(1))
            if module is None:
                return f"the base has no module {found.group(1)}"
            shape = tensors.get_slice(key).get_shape()
            want = (
                getattr(module, "in_features", None) if found.group(2) == "A" else getattr(module, "out_features", None)
            )
            have = shape[1] if found.group(2) == "A" else shape[0]
            if want is not None and want != have:
                return f"{found.group(1)} has {want} features where the adapter expects {have}"
    return ""


def detach_adapter(loaded: LoadedModel, name):
    if name in loaded.adapters:
        loaded.model.delete_adapter(name)
        del loaded.adapters[name]


def load_local_for_generation(path: Path):
    """Load a saved folder in float32 on CPU (used to show samples after training)."""
    loaded = load(LoadSettings(source=str(path), dtype="float32", device="cpu"))
    return loaded.model, loaded.tokenizer
