"""What each model worker process serves, as it reports it (`manage.py modelhub_worker`): with
model workers on, the web processes load no model, and the admin's runtime column of a model is
what the live workers say of it."""

import socket
from datetime import timedelta

from django.db import models
from django.utils import timezone

REPORT_SECONDS = 5.0  # how often a worker reports; one silent for three reports is not shown
FORGET_AFTER = timedelta(hours=1)


class ModelWorkerQuerySet(models.QuerySet):
    def live(self):
        return self.filter(seen_at__gte=timezone.now() - timedelta(seconds=3 * REPORT_SECONDS))

    def serving(self, name):
        """The live workers that serve this model, with what each says of it: [(worker, status)]."""
        return [(worker, worker.status[name]) for worker in self.live() if name in worker.status]


class ModelWorker(models.Model):
    identity = models.CharField(max_length=120, unique=True, help_text="host:pid:token, as a reply's writer.")
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    status = models.JSONField(default=dict, help_text="Each model it serves -> its runtime status.")
    started_at = models.DateTimeField(default=timezone.now)
    seen_at = models.DateTimeField(default=timezone.now)

    objects = ModelWorkerQuerySet.as_manager()

    class Meta:
        ordering = ["host", "pid"]
        verbose_name = "model worker"

    def __str__(self):
        return f"{self.host}:{self.pid}"

    @classmethod
    def report(cls, identity, served):
        """This worker is alive and serves these models ({name: runtime status}); old rows go."""
        pid = int(identity.split(":")[1])
        cls.objects.update_or_create(
            identity=identity,
            defaults={"host": socket.gethostname(), "pid": pid, "status": served, "seen_at": timezone.now()},
        )
        cls.objects.filter(seen_at__lt=timezone.now() - FORGET_AFTER).delete()

    @classmethod
    def leave(cls, identity):
        cls.objects.filter(identity=identity).delete()
