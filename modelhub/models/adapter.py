"""A LoRA adapter served on top of its base model."""

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from modelhub.backends.loading import check_adapter
from modelhub.backends.remote import load_adapter
from modelhub.models.spec import ModelSpec, allowed_to
from modelhub.options import ModelhubError
from modelhub.validators import adapter_config_problem


class AdapterQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True, base__enabled=True)

    def open_to(self, user):
        """Adapters, enabled or not, open to `user`'s groups (their base's access is the caller's)."""
        return self if user.is_superuser else allowed_to(self, Adapter.groups.through, "adapter", user)

    def usable_by(self, user):
        """Enabled adapters open to `user`'s groups (with their base's access: ModelSpec.usable_by)."""
        return self.open_to(user).filter(enabled=True)


class Adapter(models.Model):
    """A LoRA adapter (a peft folder) served on top of its base model without reloading it."""

    name = models.SlugField(max_length=100)
    base = models.ForeignKey(ModelSpec, on_delete=models.CASCADE, related_name="adapters")
    path = models.CharField(max_length=500, help_text="A folder with adapter_config.json and the adapter weights.")
    enabled = models.BooleanField(default=True)
    groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="+",
        help_text="Only members of these groups may use it (empty: everyone who may use its base model).",
    )
    description = models.TextField(blank=True)
    provenance = models.JSONField(default=dict, blank=True, help_text="How it was made: data, base revision, metrics.")
    template_hash = models.CharField(
        max_length=16,
        blank=True,
        help_text="The chat template it was trained with (modelhub.prompts.template_hash), set by its fine-tune; "
        "blank: unknown (registered by hand).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = AdapterQuerySet.as_manager()

    class Meta:
        ordering = ["base__name", "name"]
        constraints = [models.UniqueConstraint(fields=["base", "name"], name="unique_adapter_name_per_base")]

    def __str__(self):
        return f"{self.base.name} + {self.name}"

    @property
    def local_path(self):
        path = Path(self.path).expanduser()
        return path if path.is_absolute() else settings.BASE_DIR / path

    def clean(self):
        problem = self.config_problem()
        if problem:
            raise ValidationError({"path": problem})

    def config_problem(self):
        """Why the folder's adapter_config.json is not a LoRA config peft can read, or ""."""
        return adapter_config_problem(self.local_path)

    def check_fits_base(self):
        """Raise ValidationError unless the folder is a peft adapter that fits the base's modules."""
        problem = self.config_problem()
        if problem:
            raise ValidationError({"path": problem})
        if self.base.backend == ModelSpec.Backend.REMOTE and not self.base.source:
            return  # no local weights to check against: the server checks when it loads the adapter
        try:
            check_adapter(self.base.load_settings(), self.local_path)
        except ModelhubError as exc:
            raise ValidationError({"path": exc.message}) from exc

    def load_on_server(self):
        """Load this adapter on its remote base's server when that server loads adapters at run time
        (vLLM's POST /v1/load_lora_adapter); what the server said, or "" when there is nothing to do.
        The folder must be readable by the server under the same path."""
        base = self.base
        if base.backend != ModelSpec.Backend.REMOTE or not base.load_adapters_at_runtime:
            return ""

        return load_adapter(base.remote_settings(), self.name, self.local_path)

    def template_differs(self, served_hash):
        """Was this adapter trained with another chat template than `served_hash`? Never when either is
        unknown (blank): an adapter registered by hand, or a prompt chatsite did not render."""
        return bool(self.template_hash and served_hash and self.template_hash != served_hash)

    def template_check(self, served_hash):
        """In words: does the base's chat template `served_hash` match the one this adapter learnt?"""
        if not self.template_hash:
            return "unknown (not recorded)"
        if not served_hash:
            return f"unknown (trained with {self.template_hash}; the base's template is not at hand)"
        if self.template_differs(served_hash):
            return f"differs: trained with {self.template_hash}, base now {served_hash}"
        return "matches"

    def promote(self):
        """Serve this adapter: a fine-tuned adapter is registered disabled until someone promotes it."""
        self.enabled = True
        self.save(update_fields=["enabled"])
