"""Run a model worker: the process that owns the models (and the GPU) and writes the replies.

    MODELHUB_WORKERS=1 REDIS_URL=redis://... python manage.py modelhub_worker [--models NAME ...]

Web processes (daphne) started with the same MODELHUB_WORKERS=1, REDIS_URL and database hand
every chat reply to a worker (conversations/model_worker.py). Without --models it serves
every enabled model, and picks up models enabled later.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from conversations import model_worker


class Command(BaseCommand):
    help = "Serve models to the web processes over the channel layer (Redis), writing their replies."

    def add_arguments(self, parser):
        parser.add_argument("--models", nargs="+", metavar="NAME", help="serve only these models")

    def handle(self, *args, models=None, **options):
        if not settings.REDIS_URL:
            raise CommandError("a model worker needs REDIS_URL: the web processes reach it through Redis")
        self.stdout.write(f"model worker serving {', '.join(models) if models else 'every enabled model'}")
        model_worker.run(models)
