"""Run a model worker: the process that owns the models (and the GPU) and writes the replies.

    MODELHUB_WORKERS=1 REDIS_URL=redis://... python manage.py modelhub_worker [--models NAME ...]

Web processes (daphne) started with the same MODELHUB_WORKERS=1, REDIS_URL and database hand
every chat reply to a worker (conversations/model_worker.py). Without --models it serves
every enabled model, and picks up models enabled later. With --metrics-port (or
MODELHUB_WORKER_METRICS_PORT) it serves its own Prometheus metrics at http://127.0.0.1:PORT/metrics
(--metrics-address to listen elsewhere: there is no access check on that port).
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from conversations import metrics, model_worker


class Command(BaseCommand):
    help = "Serve models to the web processes over the channel layer (Redis), writing their replies."

    def add_arguments(self, parser):
        parser.add_argument("--models", nargs="+", metavar="NAME", help="serve only these models")
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=settings.MODELHUB_WORKER_METRICS_PORT,
            help="serve Prometheus metrics on this port (0: none)",
        )
        parser.add_argument("--metrics-address", default="127.0.0.1", help="address of the metrics port")

    def handle(self, *args, models=None, metrics_port=0, metrics_address="127.0.0.1", **options):
        if not settings.REDIS_URL:
            raise CommandError("a model worker needs REDIS_URL: the web processes reach it through Redis")
        if metrics_port:
            metrics.serve(metrics_port, metrics_address)
            self.stdout.write(f"metrics on http://{metrics_address}:{metrics_port}/metrics")
        self.stdout.write(f"model worker serving {', '.join(models) if models else 'every enabled model'}")
        model_worker.run(models)
