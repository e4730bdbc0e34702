"""Fine-tune a LoRA adapter on a dataset snapshot, or on JSONL files, or run a queued job.

    python manage.py finetune --snapshot 7 --base chitchat [--method sft|dpo] [--name NAME] [--epochs 3 ...]
    python manage.py finetune --base tiny --method sft --train train.jsonl --eval eval.jsonl
    python manage.py finetune --job 12

modelhub's `finetune` command with one more source of training files: a frozen
`DatasetSnapshot` (its files are checked against the sha256 recorded at export, and
the job's lineage names the snapshot). It replaces modelhub's command of the same
name because `conversations` comes first in INSTALLED_APPS (modelhub must not
import conversations, so the snapshot option lives here).

A job trained on a snapshot (this command, or the admin's background process running
`--job ID`) ends with an evaluation report of the base against the new adapter on the
snapshot's held-out rows (`manage.py evaluate`'s report; EVALUATION_AFTER_FINETUNE=0 turns
it off). A failed evaluation is stored on its report and said here; the adapter stands.
"""

from django.conf import settings
from django.core.management.base import CommandError

from conversations.management.commands.evaluate import table_lines
from conversations.models import EvaluationReport
from conversations.models.datasets import DatasetSnapshot, SnapshotChanged
from conversations.models.evaluation import EvaluationError
from modelhub.management.commands.finetune import Command as FilesCommand
from modelhub.options import ModelhubError


class Command(FilesCommand):
    help = "Fine-tune a LoRA adapter (SFT or DPO, with TRL) on a dataset snapshot or JSONL files; register it disabled."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--snapshot", type=int, help="train on this dataset snapshot's train/eval files")
        parser.set_defaults(method=None)  # a snapshot's format decides; files default to sft

    def handle(self, *args, **options):
        if not options["snapshot"]:
            return super().handle(*args, **{**options, "method": options["method"] or "sft"})
        snapshot = DatasetSnapshot.objects.filter(pk=options["snapshot"]).first()
        if snapshot is None:
            raise CommandError(f"there is no dataset snapshot {options['snapshot']}")
        if not options["base"]:
            raise CommandError("--snapshot needs --base MODEL")
        if snapshot.format not in ("sft", "dpo"):
            raise CommandError(f"snapshot {snapshot.pk} is a {snapshot.format} dataset; fine-tuning takes sft or dpo")
        if options["method"] not in (None, snapshot.format):
            raise CommandError(f"snapshot {snapshot.pk} holds {snapshot.format} rows; it cannot train --method {options['method']}")
        try:
            files = snapshot.verify()
        except SnapshotChanged as exc:
            raise CommandError(str(exc)) from exc
        options["method"] = snapshot.format
        return self.create_and_run(options, str(files["train"]), str(files["eval"]), snapshot.dataset_ref())

    def run(self, job, options):
        super().run(job, options)
        self.evaluate(job)

    def evaluate(self, job):
        """Base vs the new adapter on the job's snapshot's held-out rows, stored as an EvaluationReport."""
        snapshot = DatasetSnapshot.objects.filter(pk=(job.dataset_ref or {}).get("snapshot") or None).first()
        if not settings.EVALUATION_AFTER_FINETUNE or snapshot is None or job.adapter is None:
            return None
        try:
            report = EvaluationReport.objects.create_for(snapshot, job.base, [job.adapter], created_by=job.created_by)
            report.run()
        except (EvaluationError, ModelhubError) as exc:
            self.stderr.write(f"no evaluation report: {getattr(exc, 'message', None) or exc}")
            return None
        for line in table_lines(report):
            self.stdout.write(line)
        self.stdout.write(f"stored evaluation report {report.pk}")
        return report
