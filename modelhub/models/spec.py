"""A registered model: where its weights are (or which server serves it), how to load it, its
generation defaults and who may use it."""

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction

from modelhub.backends.loading import RESPONSE_TEMPLATES, LoadSettings, inspect_source, served_chat_template
from modelhub.backends.local import scripted_delay
from modelhub.backends.remote import RemoteSettings, check_server
from modelhub.options import GenerationOptions, ModelhubError
from modelhub.prompts import template_hash
from modelhub.validators import (
    OptionValidator,
    validate_chat_template,
    validate_device,
    validate_env_name,
    validate_server_url,
)

DEFAULTS = GenerationOptions()
KEPT_ALTERNATIVES = 5  # alternatives kept per token where the switch is on (the Inspect view shows them)

# How a reply splits into reasoning, answer and tool calls (backends/loading.py attach_response_template)
REPLY_PARTS = [("auto", "automatic"), ("none", "none: the whole reply is the answer")] + [
    (name, f"TRL's {name} response template") for name in RESPONSE_TEMPLATES
]


class ModelSpecQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True)

    def visible_to(self, user):
        """Enabled models this user may chat with: staff-only models need a staff account, and a model
        limited to groups needs one of them (a superuser passes both)."""
        models_ = self.enabled()
        if not user.is_staff:
            models_ = models_.filter(visibility=ModelSpec.Visibility.ALL)
        return models_ if user.is_superuser else allowed_to(models_, ModelSpec.groups.through, "modelspec", user)

    def usable_by(self, user):
        """`visible_to(user)`, each with `usable_adapters`: the enabled adapters this user may use (two queries)."""
        adapters = self.model._meta.get_field("adapters").related_model.objects.usable_by(user)
        return self.visible_to(user).prefetch_related(
            models.Prefetch("adapters", queryset=adapters, to_attr="usable_adapters")
        )

    def default(self):
        """The default model within this queryset (`visible_to(user).default()` respects visibility)."""
        return pick_default(self.enabled())


def allowed_to(queryset, through, field, user):
    """The rows of `queryset` open to `user`'s groups: those limited to no group, or to one of theirs.
    `through`: the rows' groups table, whose `field` points at the row."""
    limits = through.objects.filter(**{field: models.OuterRef("pk")})
    if not user.is_authenticated:
        return queryset.filter(~models.Exists(limits))
    return queryset.filter(~models.Exists(limits) | models.Exists(limits.filter(group__user=user)))


def pick_default(specs):
    """The default among these enabled models: the one marked default, else MODELHUB_DEFAULT_MODEL, else the
    oldest. One query for a queryset, none for a list already loaded (a page's model menu)."""
    specs = list(specs)
    return (
        next((spec for spec in specs if spec.is_default), None)
        or next((spec for spec in specs if spec.name == settings.MODELHUB_DEFAULT_MODEL), None)
        or min(specs, key=lambda spec: spec.pk, default=None)
    )


class ModelSpec(models.Model):
    class Backend(models.TextChoices):
        TRANSFORMERS = "transformers", "Hugging Face transformers"
        SCRIPTED = "scripted", "Scripted replies (tests and demos)"
        REMOTE = "openai", "OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp)"

    class DType(models.TextChoices):
        AUTO = "auto"
        FLOAT32 = "float32"
        BFLOAT16 = "bfloat16"
        FLOAT16 = "float16"

    class Quantization(models.TextChoices):
        NONE = "none", "none"
        INT8 = "8bit", "8-bit (LLM.int8)"
        NF4 = "nf4", "4-bit NF4"
        FP4 = "fp4", "4-bit FP4"

    class Visibility(models.TextChoices):
        ALL = "all", "all users"
        STAFF = "staff", "staff only"

    name = models.SlugField(max_length=100, unique=True, help_text="Short name used by the CLI and the API.")
    display_name = models.CharField(max_length=200, blank=True)
    backend = models.CharField(max_length=20, choices=Backend.choices, default=Backend.TRANSFORMERS)
    source = models.CharField(
        max_length=500,
        blank=True,
        help_text="A local folder (absolute, or relative to the project) or a Hugging Face Hub repo id. For a "
        "remote server: the same weights (fine-tunes train on them); empty if you will not fine-tune.",
    )
    revision = models.CharField(max_length=100, blank=True, help_text="Hub branch, tag or commit.")
    dtype = models.CharField(max_length=10, choices=DType.choices, default=DType.AUTO)
    device = models.CharField(
        max_length=20, default="auto", validators=[validate_device], help_text="auto, cpu, mps, cuda or cuda:N"
    )
    quantization = models.CharField(
        max_length=8,
        choices=Quantization.choices,
        default=Quantization.NONE,
        help_text="bitsandbytes quantization of the Linear layers (CPU and CUDA).",
    )
    double_quant = models.BooleanField(default=False, help_text="4-bit only: also quantize the quantization constants.")
    compute_dtype = models.CharField(
        max_length=10, choices=DType.choices, default=DType.AUTO, help_text="4-bit only: dtype of the matmuls."
    )
    chat_template = models.TextField(
        blank=True, validators=[validate_chat_template], help_text="Jinja chat template overriding the tokenizer's."
    )
    reply_parts = models.CharField(
        "reasoning and tool calls",
        max_length=24,
        choices=REPLY_PARTS,
        default="auto",
        help_text="How a reply splits into the model's reasoning (thinking before it answers), its answer and "
        "its tool calls. Automatic: the tokenizer's response template, or TRL's for a chat template TRL "
        "knows (Qwen3, DeepSeek-R1, gpt-oss, …); else the whole reply is the answer.",
    )
    visibility = models.CharField(max_length=8, choices=Visibility.choices, default=Visibility.ALL)
    groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="+",
        help_text="Only members of these groups may use it: model menu, compare, arena, API (empty: everyone).",
    )
    load_at_start = models.BooleanField(
        default=False,
        help_text="Load it in the background when a server or model worker starts (the default "
        "model always is), so that the first reply does not wait for the load.",
    )
    # An OpenAI-compatible server (backend "openai"): the server generates, chatsite keeps the rest.
    server_url = models.CharField(
        "server URL",
        max_length=500,
        blank=True,
        validators=[validate_server_url],
        help_text="Its OpenAI API root, e.g. http://gpu-box:8000/v1 (vLLM's `vllm serve`).",
    )
    served_model_name = models.CharField(
        max_length=200, blank=True, help_text="The model name the server serves (empty: this model's name)."
    )
    api_key_env = models.CharField(
        "API key variable",
        max_length=100,
        blank=True,
        validators=[validate_env_name],
        help_text="The environment variable holding its API key (the key itself is never stored here).",
    )
    connect_timeout = models.FloatField(
        default=5.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(600)],
        help_text="Seconds to wait for a connection to the server.",
    )
    read_timeout = models.FloatField(
        default=60.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(3600)],
        help_text="Seconds the server may stay silent before the reply fails.",
    )
    base_model_alias = models.CharField(
        max_length=200,
        blank=True,
        help_text="Served name to use for base-model requests instead (e.g. an all-zero LoRA adapter). On vLLM's "
        "CPU build, base requests batched with adapter requests get an adapter applied; `manage.py "
        "modelhub zero-adapter` writes such an adapter and `modelhub test --mixed` checks.",
    )
    load_adapters_at_runtime = models.BooleanField(
        default=False,
        help_text="Load an adapter on the server when it is enabled here (vLLM with "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1); otherwise start the server with "
        "--lora-modules NAME=FOLDER for each adapter.",
    )
    context_length = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens of prompt + reply; empty reads it from the model config."
    )
    system_prompt = models.TextField(blank=True, help_text="Default system prompt for new conversations.")
    # Generation defaults: their default values and limits are GenerationOptions' own (options.py).
    temperature = models.FloatField(default=DEFAULTS.temperature, validators=[OptionValidator("temperature")])
    top_p = models.FloatField(default=DEFAULTS.top_p, validators=[OptionValidator("top_p")])
    top_k = models.PositiveIntegerField(default=DEFAULTS.top_k, validators=[OptionValidator("top_k")])
    max_new_tokens = models.PositiveIntegerField(
        default=DEFAULTS.max_new_tokens, validators=[OptionValidator("max_new_tokens")]
    )
    repetition_penalty = models.FloatField(
        default=DEFAULTS.repetition_penalty, validators=[OptionValidator("repetition_penalty")]
    )
    token_probabilities = models.BooleanField(
        default=False,
        help_text="Keep each token's probability and its 5 likeliest alternatives with every reply "
        "(the Inspect view, branching from an alternative). Local models only; costs a "
        "softmax and a top-k per token, and about 150 bytes per token stored.",
    )
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ModelSpecQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = "model"

    def __str__(self):
        return self.display_name or self.name

    def clean(self):
        errors = {}
        if self.context_length and self.max_new_tokens >= self.context_length:
            errors["max_new_tokens"] = "Must be smaller than the context length."
        if self.quantization in (self.Quantization.NONE, self.Quantization.INT8) and self.double_quant:
            errors["double_quant"] = "Double quantization applies to 4-bit models only."
        if self.quantization != self.Quantization.NONE and self.device == "mps":
            errors["quantization"] = "bitsandbytes quantization runs on CPU and CUDA devices, not on mps."
        if self.backend == self.Backend.REMOTE:
            if not self.server_url:
                errors["server_url"] = "A remote model needs its server's URL."
        elif not self.source:
            errors["source"] = "This field is required."
        if self.backend == self.Backend.SCRIPTED:
            try:
                scripted_delay(self.source)
            except ModelhubError as exc:
                errors["source"] = exc.message
        if errors:
            raise ValidationError(errors)

    def save(self, *args, **kwargs):
        with transaction.atomic():
            if self.is_default:
                ModelSpec.objects.exclude(pk=self.pk).filter(is_default=True).update(is_default=False)
            super().save(*args, **kwargs)

    @property
    def local_path(self):
        """The folder this source names on disk, or None when it is a Hub repo id."""
        path = Path(self.source).expanduser()
        if not path.is_absolute():
            path = settings.BASE_DIR / path
        return path if path.is_dir() else None

    def check_source(self):
        """Raise ValidationError unless the model can serve: a loadable causal LM with a chat template, or
        a remote server that answers and serves it. Returns a one-line description of what was found."""

        remote = self.backend == self.Backend.REMOTE
        if self.backend == self.Backend.SCRIPTED or (remote and not self.server_url):  # clean() says what is missing
            return ""
        try:
            return self.check_server() if remote else inspect_source(self.load_settings())
        except ModelhubError as exc:
            raise ValidationError({"server_url" if remote else "source": exc.message}) from exc

    def check_server(self):
        """A one-line description of the remote server; raises ModelhubError in one sentence if it does
        not answer, is not an OpenAI API, or does not serve this model."""

        return check_server(self.remote_settings())

    def remote_settings(self):
        """The remote server's address, names and timeouts as plain values."""
        return RemoteSettings(
            url=self.server_url,
            model=self.served_model_name or self.name,
            api_key_env=self.api_key_env,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            base_alias=self.base_model_alias,
        )

    def load_settings(self):
        """Everything the loader needs, as plain values (the worker thread never touches the ORM)."""
        return LoadSettings(
            source=str(self.local_path or self.source),
            revision=self.revision,
            dtype=self.dtype,
            device=self.device if self.device not in ("", "auto") else settings.MODELHUB_DEVICE,
            quantization=self.quantization,
            double_quant=self.double_quant,
            compute_dtype=self.compute_dtype,
            chat_template=self.chat_template,
            context_length=self.context_length,
            reply_parts=self.reply_parts,
        )

    def served_template_hash(self):
        """prompts.template_hash of the chat template this model's prompts are rendered with, read from
        its tokenizer files without loading weights (it imports transformers: for the admin, not pages).
        "" where chatsite renders no template (scripted; remote: the server does) or it is not at hand."""
        if self.backend != self.Backend.TRANSFORMERS:
            return ""

        template = served_chat_template(self.load_settings())
        return template_hash(template) if template is not None else ""

    def default_options(self):
        return GenerationOptions(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            repetition_penalty=self.repetition_penalty,
            logprobs=KEPT_ALTERNATIVES if self.keeps_token_probabilities else None,
        )

    @property
    def keeps_token_probabilities(self):
        """The switch is on and chatsite runs the model (a remote server's or a script's replies keep none)."""
        return self.token_probabilities and self.backend == self.Backend.TRANSFORMERS
