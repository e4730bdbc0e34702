"""Export feedback as a frozen TRL dataset snapshot (the logic lives in conversations/datasets.py)."""

from datetime import date

from django.core.management.base import BaseCommand, CommandError

from conversations.datasets import export_snapshot
from conversations.examples import FORMATS, Filters


def _day(text):
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


class Command(BaseCommand):
    help = (
        "Write feedback as JSONL in TRL's conversational formats: FILE (train), FILE with .eval before its "
        "extension, and a .card.json beside them; record the export as a DatasetSnapshot."
    )

    def add_arguments(self, parser):
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument("--out", help="train file (default: CHAT_DATASETS_DIR/snapshot-<id>-<format>.jsonl)")
        parser.add_argument("--since", type=_day, help="feedback last edited on or after this date")
        parser.add_argument("--until", type=_day, help="feedback last edited on or before this date")
        parser.add_argument("--model", default="", help="answers of this model (name)")
        parser.add_argument("--adapter", default="", help="answers of this adapter (name)")
        parser.add_argument("--tag", default="", help="feedback with this tag (name); leaves out preferences")
        parser.add_argument("--eval-fraction", type=float, default=0.1, help="share of prompts held out (0.1)")
        parser.add_argument("--no-scrub", action="store_true", help="keep e-mail, phone and IP addresses")

    def handle(self, *args, **options):
        filters = Filters(since=options["since"], until=options["until"], model=options["model"],
                          adapter=options["adapter"], tag=options["tag"])
        try:
            snapshot = export_snapshot(options["format"], out=options["out"], filters=filters,
                                       scrub=not options["no_scrub"], eval_fraction=options["eval_fraction"])
        except (ValueError, FileExistsError) as exc:
            raise CommandError(str(exc)) from exc
        counts = snapshot.counts
        self.stdout.write(f"Snapshot #{snapshot.pk} ({snapshot.format}): {counts['train']} train rows, "
                          f"{counts['eval']} eval rows, sources {counts['sources']}")
        for name, path in [("train", snapshot.train_path), ("eval", snapshot.eval_path), ("card", snapshot.card_path)]:
            self.stdout.write(f"  {name}: {path}")
