"""Registered models: what an admin configures; `modelhub.registry` turns rows into loaded models."""

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction

from modelhub.options import GenerationOptions


class ModelSpecQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True)

    def default(self):
        """The default model: the row marked default, else MODELHUB_DEFAULT_MODEL, else the first enabled."""
        enabled = self.enabled()
        return (
            enabled.filter(is_default=True).first()
            or enabled.filter(name=settings.MODELHUB_DEFAULT_MODEL).first()
            or enabled.order_by("id").first()
        )


class ModelSpec(models.Model):
    class Backend(models.TextChoices):
        TRANSFORMERS = "transformers", "Hugging Face transformers"
        SCRIPTED = "scripted", "Scripted replies (tests and demos)"

    class DType(models.TextChoices):
        AUTO = "auto"
        FLOAT32 = "float32"
        BFLOAT16 = "bfloat16"
        FLOAT16 = "float16"

    name = models.SlugField(max_length=100, unique=True, help_text="Short name used by the CLI and the API.")
    display_name = models.CharField(max_length=200, blank=True)
    backend = models.CharField(max_length=20, choices=Backend.choices, default=Backend.TRANSFORMERS)
    source = models.CharField(
        max_length=500,
        help_text="A local folder (absolute, or relative to the project) or a Hugging Face Hub repo id.",
    )
    revision = models.CharField(max_length=100, blank=True, help_text="Hub branch, tag or commit.")
    dtype = models.CharField(max_length=10, choices=DType.choices, default=DType.AUTO)
    device = models.CharField(max_length=20, default="auto", help_text="auto, cpu, cuda or cuda:N")
    context_length = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens of prompt + reply; empty reads it from the model config."
    )
    system_prompt = models.TextField(blank=True, help_text="Default system prompt for new conversations.")
    temperature = models.FloatField(default=0.7, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)])
    top_p = models.FloatField(default=0.95, validators=[MinValueValidator(0.01), MaxValueValidator(1.0)])
    top_k = models.PositiveIntegerField(default=50)
    max_new_tokens = models.PositiveIntegerField(default=256, validators=[MinValueValidator(1)])
    repetition_penalty = models.FloatField(default=1.0, validators=[MinValueValidator(0.5), MaxValueValidator(2.0)])
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
        if self.context_length and self.max_new_tokens >= self.context_length:
            raise ValidationError({"max_new_tokens": "Must be smaller than the context length."})

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

    def default_options(self):
        return GenerationOptions(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            repetition_penalty=self.repetition_penalty,
        )
