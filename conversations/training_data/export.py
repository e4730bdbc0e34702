"""Frozen training-data snapshots: feedback exported as JSONL files for TRL, with a card.

`export_snapshot(format, ...)` is the one entry point (the admin's "Create snapshot"
form and `manage.py export_feedback` both call it):

1. build the examples of one format from the feedback and preferences that match the
   filters and whose conversations allow training (training_data/examples.py), the models'
   reasoning as `reasoning_content` of their messages unless told to leave it out;
2. scrub PII from every message text, reasoning included, unless told not to (training_data/scrub.py);
3. drop exact duplicate rows (their source rows still count as exported);
4. split by a stable hash of the prompt: sha256 of the prompt messages (as canonical
   JSON, before scrubbing, without reasoning) read as a number in [0, 1); below `eval_fraction` is eval.
   The same prompt lands in the same split in every export, whatever the row order,
   and all answers to one prompt stay together;
5. write a folder of its own: `train.jsonl`, `test.jsonl` (the held-out rows), `card.json` and
   `README.md`, the Hugging Face dataset card (dataset_card.py), so the folder loads with
   `datasets.load_dataset(folder)` and can be pushed to a hub as it is; rows sorted so the same
   data gives byte-identical files;
6. record a `DatasetSnapshot` (conversations/models/datasets.py): format, filters, paths,
   sha256 of each file, counts, the card, and exactly which Feedback and Preference rows
   produced its rows.

Files are never overwritten: a snapshot stays what it was (and deleting it deletes them).
"""

import hashlib
import json
import secrets
from datetime import UTC
from pathlib import Path

from django.conf import settings
from django.db import transaction

from conversations.models.datasets import LICENSES, DatasetSnapshot, file_sha256
from conversations.training_data import dataset_card, examples
from conversations.training_data.agreement import agreement_report
from conversations.training_data.dataset_card import SPLIT_FILES
from conversations.training_data.scrub import PLACEHOLDERS, Scrubber

COLUMNS = {"sft": ["messages"], "dpo": ["prompt", "chosen", "rejected"], "kto": ["prompt", "completion", "label"]}


def datasets_dir():
    return Path(settings.CHAT_DATASETS_DIR)


def export_snapshot(
    format,
    out=None,
    filters=None,
    scrub=True,
    eval_fraction=0.1,
    created_by=None,
    license="other",
    include_reasoning=True,
):
    """Export one format as a frozen snapshot (see the module docstring); returns the DatasetSnapshot.

    `out`: its folder, new or empty (default: CHAT_DATASETS_DIR/`folder_name(snapshot)`).
    `filters`: an `examples.Filters`; `license`: a Hugging Face license id for its card;
    `include_reasoning`: False leaves the models' reasoning out of every row (the card says which). Raises
    ValueError on a bad format, fraction or license and FileExistsError rather than overwrite a file.
    """
    filters = filters or examples.Filters()
    if not 0 <= eval_fraction < 1:
        raise ValueError("eval_fraction must be at least 0 and below 1")
    if license not in dict(LICENSES):
        raise ValueError(f"unknown license {license!r}; choose one of {', '.join(dict(LICENSES))}")
    built = examples.build(format, filters, include_reasoning=include_reasoning)
    scrubber = Scrubber() if scrub else None
    rows, duplicates = _dedupe(built, scrubber)
    splits = {"train": [], "eval": []}
    for line, example in sorted(rows.items()):
        splits["eval" if in_eval(example.prompt_text(), eval_fraction) else "train"].append((line, example))
    with transaction.atomic():
        snapshot = DatasetSnapshot.objects.create(
            format=format,
            filters=filters.as_dict(),
            scrubbed=scrub,
            eval_fraction=eval_fraction,
            created_by=created_by,
            license=license,
        )
        folder = Path(out) if out else datasets_dir() / folder_name(snapshot)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise FileExistsError(
                f"a snapshot's files are never overwritten: {folder} exists and is not an empty folder"
            )
        paths = _paths(folder)
        for split in ("train", "eval"):
            _write(paths[split], [line for line, _ in splits[split]])
        snapshot.feedback.set({pk for example in built for pk in example.feedback_ids})
        snapshot.preferences.set({pk for example in built for pk in example.preference_ids})
        _finish(snapshot, paths, splits, duplicates, scrubber, include_reasoning)
    return snapshot


def folder_name(snapshot):
    """snapshot-<id>-<format>-<created, UTC>-<random>: unique across installs, not only in this database.

    `datasets.load_dataset(folder)` caches what it read under the folder's name (not its path), so two
    installs' `snapshot-0001-sft` on one machine would load the first one's rows for both."""
    created = snapshot.created_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"snapshot-{snapshot.pk:04d}-{snapshot.format}-{created}-{secrets.token_hex(4)}"


def in_eval(prompt_text, eval_fraction):
    """Stable split: the prompt's sha256 as a fraction of 2**64 decides, not the row order."""
    digest = hashlib.sha256(prompt_text.encode("utf-8")).hexdigest()
    return int(digest[:16], 16) / 2**64 < eval_fraction


def _dedupe(built, scrubber):
    """{jsonl line: example}, one per distinct row; the dropped duplicates' source ids join the kept one."""
    rows, duplicates = {}, 0
    for example in built:
        row = _scrubbed(example.row, scrubber) if scrubber else example.row
        line = json.dumps(row, ensure_ascii=False)  # keys in TRL's column order
        if line in rows:
            duplicates += 1
            rows[line].feedback_ids |= example.feedback_ids
            rows[line].preference_ids |= example.preference_ids
        else:
            rows[line] = example
    return rows, duplicates


def _scrubbed(value, scrubber):
    if isinstance(value, str):
        return scrubber(value)
    if isinstance(value, list):
        return [_scrubbed(item, scrubber) for item in value]
    if isinstance(value, dict):
        return {key: item if key == "role" else _scrubbed(item, scrubber) for key, item in value.items()}
    return value


def _paths(folder):
    return {
        "train": folder / SPLIT_FILES["train"],
        "eval": folder / SPLIT_FILES["test"],
        "card": folder / "card.json",
        "readme": folder / "README.md",
    }


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as handle:  # "x": never overwrite a snapshot's file
        handle.writelines(line + "\n" for line in lines)


def _finish(snapshot, paths, splits, duplicates, scrubber, include_reasoning):
    """Counts, sha256 and the card: saved on the snapshot and written beside the files."""
    counts = {split: len(rows) for split, rows in splits.items()}
    counts["sources"] = _tally(example.source for rows in splits.values() for _, example in rows)
    counts["duplicates_removed"] = duplicates
    if snapshot.format == "kto":
        counts["labels"] = {
            split: _tally("true" if ex.row["label"] else "false" for _, ex in rows) for split, rows in splits.items()
        }
    snapshot.train_path, snapshot.eval_path, snapshot.card_path = (
        str(paths[k].resolve()) for k in ("train", "eval", "card")
    )
    snapshot.train_sha256, snapshot.eval_sha256 = file_sha256(paths["train"]), file_sha256(paths["eval"])
    snapshot.counts = counts
    reasoning = {
        "included": include_reasoning,
        "field": examples.REASONING if include_reasoning else None,
        "rows": sum(example.has_reasoning() for rows in splits.values() for _, example in rows),
    }
    snapshot.card = _card(snapshot, scrubber, reasoning)
    _write(paths["card"], [json.dumps(snapshot.card, indent=2, ensure_ascii=False)])
    _write(paths["readme"], [dataset_card.render(snapshot)])
    snapshot.save()


def _tally(values):
    tally = {}
    for value in values:
        tally[value] = tally.get(value, 0) + 1
    return dict(sorted(tally.items()))


def _card(snapshot, scrubber, reasoning):
    return {
        "snapshot_id": snapshot.pk,
        "created_at": snapshot.created_at.isoformat(),
        "format": snapshot.format,
        "license": snapshot.license,
        "columns": COLUMNS[snapshot.format],
        "trl_format": "conversational",
        "reasoning": reasoning,  # of assistant messages, apart from their answers (examples.py)
        "counts": snapshot.counts,
        "filters": snapshot.filters,
        "consent": "only conversations that allow training, as of the export",
        "scrubbing": {
            "enabled": snapshot.scrubbed,
            "placeholders": list(PLACEHOLDERS.values()) if scrubber else [],
            "replaced": dict(scrubber.counts) if scrubber else {},
        },
        "split": {
            "eval_fraction": snapshot.eval_fraction,
            "method": "sha256 of the prompt messages (canonical JSON, before scrubbing, without reasoning) "
            "< eval_fraction",
        },
        "lineage": {"feedback": snapshot.feedback.count(), "preferences": snapshot.preferences.count()},
        "review": {
            "approved_only": bool(snapshot.filters.get("reviewed")),
            "reviews_per_item": settings.CHAT_REVIEWS_PER_ITEM,
            **agreement_report(snapshot.feedback.values_list("pk", flat=True)),
        },
        "files": {
            "train": {"path": snapshot.train_path, "sha256": snapshot.train_sha256, "rows": snapshot.counts["train"]},
            "eval": {"path": snapshot.eval_path, "sha256": snapshot.eval_sha256, "rows": snapshot.counts["eval"]},
        },
    }
