"""Register the built-in chat model shipped in modelhub/builtin/ (idempotent)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from modelhub.models import ModelSpec

BUILTIN_NAME = "chitchat"


class Command(BaseCommand):
    help = "Register the built-in chitchat model, and make it the default if there is none."

    def handle(self, *args, **options):
        folder = settings.MODELHUB_BUILTIN_DIR / BUILTIN_NAME
        if not (folder / "config.json").exists():
            raise CommandError(f"the built-in model is missing from {folder}; run `manage.py train_default_model`")
        spec, created = ModelSpec.objects.get_or_create(
            name=BUILTIN_NAME,
            defaults={
                "display_name": "chitchat (built-in)",
                "source": str(folder.relative_to(settings.BASE_DIR)),
                "dtype": ModelSpec.DType.FLOAT32,
                "device": "cpu",
                "temperature": 0.8,
                "top_p": 0.9,
                "top_k": 40,
                "max_new_tokens": 96,
                "repetition_penalty": 1.1,
                "token_probabilities": True,  # small enough to keep them, and a model to learn the Inspect view on
            },
        )
        if not ModelSpec.objects.filter(is_default=True).exists():
            spec.is_default = True
            spec.save()
        self.stdout.write(f"{'Registered' if created else 'Found'} the built-in model {spec.name!r}.")
