"""Fine-tune a LoRA adapter (SFT or DPO, with TRL) on a dataset snapshot or JSONL files, or run a queued job.

    python manage.py finetune --snapshot 7 --base chitchat [--method sft|dpo] [--name NAME] [--epochs 3 ...]
    python manage.py finetune --base tiny --method sft --train train.jsonl --eval eval.jsonl [--name my-adapter]
    python manage.py finetune --job 12     # run a queued FinetuneJob (what the admin's background process runs)

The adapter is registered disabled, with its lineage; promote it in the admin (Adapters → Promote)
to serve it. A failed run is recorded on its job and exits non-zero. Training is modelhub's
(`api.run_job`); a frozen `DatasetSnapshot` is this app's: its files are checked against the sha256
recorded at export, and the job's lineage names the snapshot.

A job trained on a snapshot (this command, or the admin's background process running `--job ID`)
ends with an evaluation report of the base against the new adapter on the snapshot's held-out rows
(`manage.py evaluate`'s report; EVALUATION_AFTER_FINETUNE=0 turns it off). A failed evaluation is
stored on its report and said here; the adapter stands.
"""

import argparse
import json
import sys
from dataclasses import fields

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from conversations.management.commands.evaluate import table_lines
from conversations.models import EvaluationReport
from conversations.models.datasets import DatasetSnapshot, SnapshotChanged
from conversations.models.evaluation import EvaluationError
from modelhub import api
from modelhub.models import FinetuneJob, ModelSpec


class Command(BaseCommand):
    help = "Fine-tune a LoRA adapter (SFT or DPO, with TRL) on a dataset snapshot or JSONL files; register it disabled."

    def add_arguments(self, parser):
        parser.add_argument("--job", type=int, help="run this queued fine-tune job")
        parser.add_argument("--base", help="name of the registered model to adapt")
        parser.add_argument(
            "--method", choices=api.FINETUNE_METHODS, help="sft or dpo (default: a snapshot's format, else sft)"
        )
        parser.add_argument("--train", help="JSONL file of training examples")
        parser.add_argument("--eval", help="JSONL file of held-out examples")
        parser.add_argument("--name", default="", help="adapter name (default: <method>-job-<id>)")
        parser.add_argument("--dataset-ref", default="{}", help="JSON saying where the files came from")
        parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
        parser.add_argument("--snapshot", type=int, help="train on this dataset snapshot's train/eval files")
        hp = parser.add_argument_group("hyper-parameters")
        for field in fields(api.Hyperparameters):
            flag = f"--{field.name.replace('_', '-')}"
            if isinstance(field.default, bool):
                hp.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
            else:
                hp.add_argument(flag, type=type(field.default), default=field.default)

    def handle(self, *args, **options):
        if options["job"]:
            job = FinetuneJob.objects.filter(pk=options["job"]).first()
            if job is None:
                raise CommandError(f"there is no fine-tune job {options['job']}")
            return self.run(job, options)
        return self._snapshot(options) if options["snapshot"] else self._files(options)

    def _snapshot(self, options):
        snapshot = DatasetSnapshot.objects.filter(pk=options["snapshot"]).first()
        if snapshot is None:
            raise CommandError(f"there is no dataset snapshot {options['snapshot']}")
        if not options["base"]:
            raise CommandError("--snapshot needs --base MODEL")
        if snapshot.format not in ("sft", "dpo"):
            raise CommandError(f"snapshot {snapshot.pk} is a {snapshot.format} dataset; fine-tuning takes sft or dpo")
        if options["method"] not in (None, snapshot.format):
            raise CommandError(
                f"snapshot {snapshot.pk} holds {snapshot.format} rows; it cannot train --method {options['method']}"
            )
        try:
            files = snapshot.verify()
        except SnapshotChanged as exc:
            raise CommandError(str(exc)) from exc
        options["method"] = snapshot.format
        return self.create_and_run(options, str(files["train"]), str(files["eval"]), snapshot.dataset_ref())

    def _files(self, options):
        missing = [f"--{name}" for name in ("base", "train", "eval") if not options[name]]
        if missing:
            raise CommandError(f"give --job, --snapshot (with --base), or {', '.join(missing)}")
        try:
            dataset_ref = json.loads(options["dataset_ref"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--dataset-ref is not JSON: {exc}") from None
        return self.create_and_run(
            {**options, "method": options["method"] or "sft"}, options["train"], options["eval"], dataset_ref
        )

    def create_and_run(self, options, train_path, eval_path, dataset_ref):
        """Queue a job for these files with the options' hyper-parameters, then run it here."""
        base = ModelSpec.objects.filter(name=options["base"]).first()
        if base is None:
            raise CommandError(f"there is no model named {options['base']!r}")
        hparams = {f.name: options[f.name] for f in fields(api.Hyperparameters)}
        try:
            job = FinetuneJob.objects.create_for(
                base, options["method"], train_path, eval_path, dataset_ref, hparams, adapter_name=options["name"]
            )
        except api.ModelhubError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"fine-tune job {job.pk}: {job}")
        return self.run(job, options)

    def run(self, job, options):
        progress_bar = not options["no_progress"] and sys.stderr.isatty()
        try:
            adapter = api.run_job(job, progress_bar=progress_bar)
        except api.ModelhubError as exc:
            raise CommandError(f"fine-tune job {job.pk} failed: {exc.message}") from exc
        except Exception as exc:  # recorded on the job by run_job; say so and exit non-zero
            raise CommandError(f"fine-tune job {job.pk} failed: {type(exc).__name__}: {exc}") from exc
        metrics = job.metrics
        before, after = metrics["eval_before"], metrics["eval_after"]
        self.stdout.write(
            f"held-out loss {before['loss']:.4f} → {after['loss']:.4f}"
            + (f", perplexity {before['perplexity']:.2f} → {after['perplexity']:.2f}" if "perplexity" in after else "")
            + f"; {metrics['steps']} steps in {metrics['train_seconds']} s"
            + (" (stopped early)" if metrics["stopped_early"] else "")
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"registered adapter {adapter.name!r} on {adapter.base.name} at {adapter.path} "
                "(disabled: promote it to serve)"
            )
        )
        self.evaluate(job)

    def evaluate(self, job):
        """Base vs the new adapter on the job's snapshot's held-out rows, stored as an EvaluationReport."""
        snapshot = DatasetSnapshot.objects.filter(pk=(job.dataset_ref or {}).get("snapshot") or None).first()
        if not settings.EVALUATION_AFTER_FINETUNE or snapshot is None or job.adapter is None:
            return None
        try:
            report = EvaluationReport.objects.create_for(snapshot, job.base, [job.adapter], created_by=job.created_by)
            report.run()
        except (EvaluationError, api.ModelhubError) as exc:
            self.stderr.write(f"no evaluation report: {getattr(exc, 'message', None) or exc}")
            return None
        for line in table_lines(report):
            self.stdout.write(line)
        self.stdout.write(f"stored evaluation report {report.pk}")
        return report
