"""Export feedback as a frozen TRL dataset snapshot (the logic lives in conversations/training_data/export.py)."""

import os
from argparse import ArgumentTypeError
from datetime import date
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from conversations.models.datasets import LICENSES
from conversations.training_data.examples import FORMATS, Filters
from conversations.training_data.export import export_snapshot

# Argument types raise ArgumentTypeError: argparse turns it into a usage error (a CommandError
# under call_command), where an exception of its own would escape parse_args as a traceback.


def _day(text):
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _new_folder(text):
    """A folder this user can fill: new or empty, under a folder (or a path of new ones) it may write in."""
    path = Path(text).expanduser()
    try:
        if path.exists() and not path.is_dir():
            raise ArgumentTypeError(f"{text} is a file, not a folder")
        if path.is_dir() and any(path.iterdir()):
            raise ArgumentTypeError(f"{text} is a folder with files in it: a snapshot gets a new or empty one")
        folder = next(parent for parent in path.absolute().parents if parent.exists())
    except OSError as exc:  # a name too long, a folder it may not look into
        raise ArgumentTypeError(f"cannot write {text}: {exc.strerror}") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ArgumentTypeError(f"cannot write {text}: {folder} is not a folder this user may write in")
    return str(path)


class Command(BaseCommand):
    help = (
        "Write feedback as JSONL in TRL's conversational formats into a folder of its own: train.jsonl, "
        "test.jsonl (held out), card.json and README.md (a Hugging Face dataset card: the folder loads with "
        "datasets.load_dataset); record the export as a DatasetSnapshot."
    )

    def add_arguments(self, parser):
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument(
            "--out",
            type=_new_folder,
            help="the snapshot's folder, new or empty "
            "(default: CHAT_DATASETS_DIR/snapshot-<id>-<format>-<time>-<random>/)",
        )
        parser.add_argument(
            "--license",
            default="other",
            choices=[name for name, _ in LICENSES],
            help="the license its dataset card states (a Hugging Face license id; default: other)",
        )
        parser.add_argument("--since", type=_day, help="feedback last edited on or after this date")
        parser.add_argument("--until", type=_day, help="feedback last edited on or before this date")
        parser.add_argument("--model", default="", help="answers of this model (name)")
        parser.add_argument("--adapter", default="", help="answers of this adapter (name)")
        parser.add_argument("--tag", default="", help="feedback with this tag (name); leaves out preferences")
        parser.add_argument(
            "--reviewed",
            action="store_true",
            help="only feedback the review queue approved, with the corrections as approved (leaves out preferences)",
        )
        parser.add_argument("--eval-fraction", type=float, default=0.1, help="share of prompts held out (0.1)")
        parser.add_argument("--no-scrub", action="store_true", help="keep e-mail, phone and IP addresses")
        parser.add_argument(
            "--no-reasoning",
            action="store_true",
            help="leave the models' reasoning out (by default it is the reasoning_content of assistant messages)",
        )

    def handle(self, *args, **options):
        if options["since"] and options["until"] and options["since"] > options["until"]:
            raise CommandError(f"--since {options['since']} is after --until {options['until']}: nothing is in between")
        filters = Filters(
            since=options["since"],
            until=options["until"],
            model=options["model"],
            adapter=options["adapter"],
            tag=options["tag"],
            reviewed=options["reviewed"],
        )
        try:
            snapshot = export_snapshot(
                options["format"],
                out=options["out"],
                filters=filters,
                scrub=not options["no_scrub"],
                eval_fraction=options["eval_fraction"],
                license=options["license"],
                include_reasoning=not options["no_reasoning"],
            )
        except (ValueError, FileExistsError) as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:  # the disk is full, the folder went away or is read-only
            raise CommandError(f"could not write the snapshot: {exc}") from exc
        counts = snapshot.counts
        self.stdout.write(
            f"Snapshot #{snapshot.pk} ({snapshot.format}): {counts['train']} train rows, "
            f"{counts['eval']} eval rows, sources {counts['sources']}"
        )
        self.stdout.write(f"  folder: {snapshot.folder} (datasets.load_dataset loads it; README.md is its card)")
        for name, path in [("train", snapshot.train_path), ("test", snapshot.eval_path), ("card", snapshot.card_path)]:
            self.stdout.write(f"  {name}: {path}")
