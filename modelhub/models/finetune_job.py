"""A LoRA fine-tune of a base model, as a job row that its training process updates: what a job may ask
(its method and hyper-parameters, checked when it is queued), and whether its process still runs. The
training itself is modelhub/training/finetune.py's `run_job`."""

import os
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from modelhub.models.adapter import Adapter
from modelhub.models.spec import ModelSpec
from modelhub.options import ModelhubError

METHODS = ("sft", "dpo")


class FinetuneError(ModelhubError):
    pass


@dataclass
class Hyperparameters:
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    batch_size: int = 4
    grad_accumulation: int = 1
    max_length: int = 1024  # tokens per example; capped at the model's context length
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str = ""  # comma-separated module names; empty: every attention and MLP projection
    eval_steps: int = 20  # evaluate (and checkpoint) every this many optimizer steps
    patience: int = 3  # stop after this many evaluations without a better held-out loss
    beta: float = 0.1  # DPO only: how strongly the adapter is held near the base model
    gradient_checkpointing: bool = False  # trade compute for memory on big models
    seed: int = 42

    @classmethod
    def from_dict(cls, values):
        """Defaults overridden by `values`; an unknown name or a wrong type is an error, not ignored."""
        known = {f.name: f for f in fields(cls)}
        unknown = set(values or {}) - set(known)
        if unknown:
            raise FinetuneError(f"unknown hyper-parameters: {', '.join(sorted(unknown))}")
        cast = {}
        for name, value in (values or {}).items():
            kind = type(known[name].default)
            try:
                cast[name] = value if isinstance(value, kind) else kind(value)
            except (TypeError, ValueError):
                raise FinetuneError(f"hyper-parameter {name}={value!r} is not a {kind.__name__}") from None
        return cls(**cast)


def process_alive(pid, job_id):
    """Whether `pid` is still job `job_id`'s `manage.py finetune --job` process on this machine.

    Where /proc exists (Linux), a killed process its parent has not reaped yet (a zombie)
    is gone, and so is a pid reused by another program (its command line names no such
    job); an empty command line (a process still in exec) is given the benefit of the doubt.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours, but alive
        pass
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self/stat").exists():
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        args = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    if state in ("Z", "X"):
        return False
    if not any(args):
        return True
    return any(a == b"--job" and b == str(job_id).encode() for a, b in zip(args, args[1:]))


class FinetuneJobQuerySet(models.QuerySet):
    def create_for(
        self, base, method, train_path, eval_path, dataset_ref=None, hparams=None, user=None, adapter_name=""
    ):
        """A queued job with validated hyper-parameters (defaults filled in) and a free adapter name.

        `dataset_ref` says where the files came from (e.g. {"snapshot": 3, "sha256": ...});
        it is copied into the adapter's lineage.
        """
        if method not in METHODS:
            raise FinetuneError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
        if not base.source:
            raise FinetuneError(
                f"{base.name} names no weights to train on: a remote model is fine-tuned on the "
                "same weights as its server's, so set its source to their folder or Hub id"
            )
        hp = Hyperparameters.from_dict(hparams or {})
        with transaction.atomic():
            job = self.create(
                base=base,
                method=method,
                train_path=str(train_path),
                eval_path=str(eval_path),
                dataset_ref=dataset_ref or {},
                hyperparameters=asdict(hp),
                created_by=user,
                adapter_name=adapter_name,
            )
            if not job.adapter_name:
                job.adapter_name = f"{method}-job-{job.pk}"
                job.save(update_fields=["adapter_name"])
            if Adapter.objects.filter(base=base, name=job.adapter_name).exists():
                raise FinetuneError(f"{base.name} already has an adapter named {job.adapter_name!r}")
        return job

    def fail_lost(self):
        """Fail the unfinished jobs whose training process on this machine is gone without a
        result (killed, out of memory, the machine restarted); returns them."""
        lost = []
        unfinished = [FinetuneJob.Status.QUEUED, FinetuneJob.Status.RUNNING]
        for job in self.filter(status__in=unfinished, pid__isnull=False, host=socket.gethostname()):
            if process_alive(job.pid, job.pk):
                continue
            error = (
                f"The training process (pid {job.pid}) ended without recording a result: it was killed "
                "(out of memory?) or the machine restarted. Its log may say more."
            )
            # Only if it still is what we saw: a job that just finished keeps its result.
            if FinetuneJob.objects.filter(pk=job.pk, status=job.status).update(
                status=FinetuneJob.Status.FAILED, error=error, finished_at=timezone.now()
            ):
                lost.append(job)
        return lost


class FinetuneJob(models.Model):
    """One LoRA fine-tune of a base model on two JSONL files; `modelhub.training.finetune.run_job` runs it."""

    class Method(models.TextChoices):
        SFT = "sft", "SFT (supervised, on conversations)"
        DPO = "dpo", "DPO (preferences: chosen over rejected)"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    base = models.ForeignKey(ModelSpec, on_delete=models.CASCADE, related_name="finetune_jobs")
    method = models.CharField(max_length=3, choices=Method.choices)
    adapter_name = models.SlugField(max_length=100, blank=True, help_text="Empty: method-job-ID, e.g. sft-job-12.")
    train_path = models.CharField(max_length=500, help_text="JSONL file of training examples.")
    eval_path = models.CharField(max_length=500, help_text="JSONL file of held-out examples.")
    dataset_ref = models.JSONField(default=dict, blank=True, help_text="Where the files came from.")
    hyperparameters = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    loss_history = models.JSONField(default=dict, blank=True, help_text='{"train": [[step, loss]], "eval": [...]}')
    metrics = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    adapter = models.ForeignKey(Adapter, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    log_path = models.CharField(max_length=500, blank=True, help_text="Output of the background process.")
    pid = models.PositiveIntegerField(null=True, blank=True)
    host = models.CharField(max_length=255, blank=True, help_text="The machine its process runs on.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = FinetuneJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "fine-tune job"

    def __str__(self):
        return f"{self.method} of {self.base.name} → {self.adapter_name or '?'} ({self.status})"

    def _set(self, **values):
        """Write these columns only: the training process and the admin may touch other ones meanwhile."""
        for name, value in values.items():
            setattr(self, name, value)
        FinetuneJob.objects.filter(pk=self.pk).update(**values)

    def launched(self, log_path, pid):
        self._set(log_path=str(log_path), pid=pid, host=socket.gethostname())

    def start(self):
        """Queued → running; refuses a job that already ran, so two clicks never train twice."""
        started = FinetuneJob.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.RUNNING, started_at=timezone.now()
        )
        if not started:
            self.refresh_from_db(fields=["status"])
            raise FinetuneError(f"job {self.pk} is {self.status}, not queued")
        self.refresh_from_db(fields=["status", "started_at"])

    def record_progress(self, step, total, history):
        self._set(step=step, total_steps=total, loss_history=history)

    def succeed(self, result):
        """Register the trained adapter, disabled until promoted, with its lineage."""
        with transaction.atomic():
            self.adapter = Adapter.objects.create(
                name=self.adapter_name,
                base=self.base,
                path=str(result.adapter_dir),
                enabled=False,
                description=f"{self.get_method_display()} by fine-tune job {self.pk}",
                provenance=self.lineage(result),
                template_hash=result.chat_template_sha256[:16],  # as prompts.template_hash: what replies record
            )
            self._set(
                status=self.Status.SUCCEEDED,
                metrics=result.metrics,
                loss_history=result.history,
                step=result.metrics["steps"],
                adapter=self.adapter,
                finished_at=timezone.now(),
            )
        return self.adapter

    def fail(self, error):
        self._set(status=self.Status.FAILED, error=str(error), finished_at=timezone.now())

    def lineage(self, result):
        """What made the adapter: data, base weights, chat template, settings, measurements."""
        return {
            "job": self.pk,
            "method": self.method,
            "dataset": self.dataset_ref,
            "train_path": self.train_path,
            "eval_path": self.eval_path,
            "base": {
                "name": self.base.name,
                "source": self.base.source,
                "revision": self.base.revision,
                "commit": result.base_commit,
                "quantization": self.base.quantization,
            },
            "chat_template_sha256": result.chat_template_sha256,
            "hyperparameters": self.hyperparameters,
            "target_modules": result.target_modules,
            "metrics": result.metrics,
            "created_by": self.created_by.get_username() if self.created_by else None,
        }
