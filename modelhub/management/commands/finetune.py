"""Fine-tune a LoRA adapter on a registered model, from JSONL files or as a queued job.

    python manage.py finetune --base tiny --method sft --train train.jsonl --eval eval.jsonl [--name my-adapter]
                              [--epochs 3 --learning-rate 2e-4 --lora-r 8 ...]
    python manage.py finetune --job 12     # run a queued FinetuneJob (what the admin's background process runs)

The adapter is registered disabled, with its lineage; promote it in the admin
(Adapters → Promote) to serve it. A failed run is recorded on its job and exits
non-zero. Other sources of training files extend this command: subclass it, add
an option, and call `self.create_and_run(options, train, eval, dataset_ref)`.
"""

import argparse
import json
import sys
from dataclasses import fields

from django.core.management.base import BaseCommand, CommandError

from modelhub.finetune import METHODS, Hyperparameters, run_job
from modelhub.models import FinetuneJob, ModelSpec
from modelhub.options import ModelhubError


class Command(BaseCommand):
    help = "Fine-tune a LoRA adapter (SFT or DPO, with TRL) and register it, disabled, with its lineage."

    def add_arguments(self, parser):
        parser.add_argument("--job", type=int, help="run this queued fine-tune job")
        parser.add_argument("--base", help="name of the registered model to adapt")
        parser.add_argument("--method", choices=METHODS, default="sft")
        parser.add_argument("--train", help="JSONL file of training examples")
        parser.add_argument("--eval", help="JSONL file of held-out examples")
        parser.add_argument("--name", default="", help="adapter name (default: <method>-job-<id>)")
        parser.add_argument("--dataset-ref", default="{}", help="JSON saying where the files came from")
        parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
        hp = parser.add_argument_group("hyper-parameters")
        for field in fields(Hyperparameters):
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
        missing = [f"--{name}" for name in ("base", "train", "eval") if not options[name]]
        if missing:
            raise CommandError(f"give --job, or {', '.join(missing)}")
        try:
            dataset_ref = json.loads(options["dataset_ref"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--dataset-ref is not JSON: {exc}") from None
        return self.create_and_run(options, options["train"], options["eval"], dataset_ref)

    def create_and_run(self, options, train_path, eval_path, dataset_ref):
        """Queue a job for these files with the options' hyper-parameters, then run it here."""
        base = ModelSpec.objects.filter(name=options["base"]).first()
        if base is None:
            raise CommandError(f"there is no model named {options['base']!r}")
        hparams = {f.name: options[f.name] for f in fields(Hyperparameters)}
        try:
            job = FinetuneJob.objects.create_for(
                base, options["method"], train_path, eval_path, dataset_ref, hparams, adapter_name=options["name"]
            )
        except ModelhubError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"fine-tune job {job.pk}: {job}")
        return self.run(job, options)

    def run(self, job, options):
        progress_bar = not options["no_progress"] and sys.stderr.isatty()
        try:
            adapter = run_job(job, progress_bar=progress_bar)
        except ModelhubError as exc:
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
        self.stdout.write(self.style.SUCCESS(
            f"registered adapter {adapter.name!r} on {adapter.base.name} at {adapter.path} "
            "(disabled: promote it to serve)"
        ))
