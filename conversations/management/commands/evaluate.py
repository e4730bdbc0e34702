"""Evaluate a base model against adapters of it on a dataset snapshot's held-out rows, and store the report.

    python manage.py evaluate --model tiny --snapshot 7 [--adapter sft-job-3 --adapter other] [--max-rows 200]

Each candidate (the base, then each adapter; every adapter of the base when none is named)
answers the held-out prompts greedily; the report holds perplexity of the reference answers,
BLEU, chrF, ROUGE, distinct-n, lengths, each difference against the base with a paired
bootstrap 95% interval, and arena win rates where votes exist (conversations/models/evaluation.py).
The admin shows it with a plot (Evaluation reports).
"""

from django.core.management.base import BaseCommand, CommandError

from conversations.models import DatasetSnapshot, EvaluationReport
from conversations.models.evaluation import EvaluationError
from modelhub.api import METRICS, ModelhubError
from modelhub.models import ModelSpec


class Command(BaseCommand):
    help = "Compare a base model and its adapters on a snapshot's held-out rows; store an evaluation report."

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, help="name of the registered base model")
        parser.add_argument(
            "--adapter",
            action="append",
            default=[],
            help="an adapter of the model (repeat it; default: every adapter of the model)",
        )
        parser.add_argument("--snapshot", type=int, required=True, help="the dataset snapshot whose eval rows to use")
        parser.add_argument("--max-rows", type=int, default=None, help="at most this many rows (EVALUATION_MAX_ROWS)")
        parser.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit")
        parser.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (EVALUATION_RESAMPLES)")
        parser.add_argument("--seed", type=int, default=0, help="seeds the bootstrap")

    def handle(self, *args, **options):
        report = self.create(options)
        self.stdout.write(f"evaluation report {report.pk}: {report}")
        try:
            report.run(resamples=options["resamples"])
        except (EvaluationError, ModelhubError) as exc:
            raise CommandError(f"evaluation {report.pk} failed: {getattr(exc, 'message', None) or exc}") from exc
        for line in table_lines(report):
            self.stdout.write(line)
        self.stdout.write(self.style.SUCCESS(f"stored evaluation report {report.pk}"))

    def create(self, options):
        base = ModelSpec.objects.filter(name=options["model"]).first()
        if base is None:
            raise CommandError(f"there is no model named {options['model']!r}")
        snapshot = DatasetSnapshot.objects.filter(pk=options["snapshot"]).first()
        if snapshot is None:
            raise CommandError(f"there is no dataset snapshot {options['snapshot']}")
        adapters = list(base.adapters.all())
        if options["adapter"]:
            by_name = {adapter.name: adapter for adapter in adapters}
            unknown = [name for name in options["adapter"] if name not in by_name]
            if unknown:
                raise CommandError(f"{base.name} has no adapter named {', '.join(unknown)}")
            adapters = [by_name[name] for name in options["adapter"]]
        overrides = {"max_new_tokens": options["max_new_tokens"]} if options["max_new_tokens"] else {}
        try:
            return EvaluationReport.objects.create_for(
                snapshot, base, adapters, max_rows=options["max_rows"], options=overrides, seed=options["seed"]
            )
        except EvaluationError as exc:
            raise CommandError(str(exc)) from exc


def table_lines(report):
    """The metrics, one line per metric: each candidate's value, then its difference [95% interval]."""
    yield "metric".ljust(14) + "".join(name[:38].ljust(40) for name in report.candidates)
    for metric in METRICS:
        cells = []
        for name in report.candidates:
            value = report.metrics[name][metric]
            cell = "-" if value is None else f"{value:.3f}"
            diff = report.differences.get(name, {}).get(metric)
            if diff and diff["low"] is not None:
                cell += f" ({diff['difference']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}])"
            cells.append(cell.ljust(40))
        yield metric.ljust(14) + "".join(cells)
