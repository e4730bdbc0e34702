"""A snapshot's dataset card: the folder's README.md, as the Hugging Face Hub reads it.

YAML front matter (license as the admin chose, task category, size category, who annotated, the
`configs` that map the splits to their files, so `datasets.load_dataset(folder)` and the Hub's viewer
read it as it is), then the snapshot's lineage in prose (templates/conversations/dataset_card.md): where
the rows come from, whether the models' reasoning is in them, consent, scrubbing, review, the split, and the
files' sha256. The same facts in machine
form are card.json (export.py).
Text users typed (the export's filters) goes in through `markdown_text`: a hub renders it as that text, never
as a tag, a link or an image.
"""

import html
import re

import yaml
from django.template.loader import render_to_string

SIZES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
]
SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}  # the held-out (eval) rows are the `test` split
TRAINERS = {"sft": "SFTTrainer", "dpo": "DPOTrainer", "kto": "KTOTrainer"}
MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]()!~|])")  # what makes code, emphasis, links and images inline


def markdown_text(value):
    """Text a user typed (a filter), as Markdown that a hub renders as exactly that text: on one line (no
    block of its own), Markdown's inline punctuation backslash-escaped (no code, link or image) and HTML's
    special characters as entities (no tag: hubs render a card's raw HTML)."""
    one_line = " ".join(str(value).split())
    return html.escape(MARKDOWN_INLINE.sub(r"\\\1", one_line), quote=False)


def size_category(rows):
    return next((name for limit, name in SIZES if rows < limit), "n>10M")


def front_matter(snapshot):
    counts, review = snapshot.counts, snapshot.card.get("review", {})
    annotators = ["crowdsourced"] + (["expert-generated"] if review.get("items") else [])
    splits = [{"split": "train", "path": SPLIT_FILES["train"]}]
    if counts.get("eval"):  # an empty file is no split: the loader would find no columns in it
        splits.append({"split": "test", "path": SPLIT_FILES["test"]})
    return {
        "license": snapshot.license,
        "pretty_name": f"chatsite snapshot {snapshot.pk} ({snapshot.format})",
        "task_categories": ["text-generation"],
        "size_categories": [size_category(counts.get("train", 0) + counts.get("eval", 0))],
        "annotations_creators": annotators,
        "language_creators": ["crowdsourced", "machine-generated"],
        "tags": ["chatsite", "trl", snapshot.format, "conversational"],
        "configs": [{"config_name": "default", "data_files": splits}],
    }


def render(snapshot):
    """The README.md text: front matter, then the lineage (templates/conversations/dataset_card.md)."""
    card = snapshot.card
    filters = [
        f"{key} {markdown_text(value)}" for key, value in snapshot.filters.items() if value and key != "reviewed"
    ]
    if snapshot.filters.get("reviewed"):
        filters.append("approved items only")
    sources = ", ".join(f"{count} from {source}" for source, count in snapshot.counts.get("sources", {}).items())
    replaced = ", ".join(f"{count} {kind}" for kind, count in card["scrubbing"]["replaced"].items())
    context = {
        "front_matter": yaml.safe_dump(front_matter(snapshot), sort_keys=False, allow_unicode=True),
        "snapshot": snapshot,
        "card": card,
        "counts": snapshot.counts,
        "review": card.get("review", {}),
        "reasoning": card.get("reasoning", {}),
        "format": snapshot.format.upper(),
        "trainer": TRAINERS[snapshot.format],
        "files": SPLIT_FILES,
        "filters": ", ".join(filters) or "none",
        "sources": sources or "none",
        "replaced": replaced or "none found",
    }
    return render_to_string("conversations/dataset_card.md", context)
