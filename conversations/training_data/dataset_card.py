"""A snapshot's dataset card: the folder's README.md, as the Hugging Face Hub reads it.

YAML front matter (license as the admin chose, task category, size category, who annotated, the
`configs` that map the splits to their files, so `datasets.load_dataset(folder)` and the Hub's viewer
read it as it is), then the snapshot's lineage in prose: where the rows come from, consent, scrubbing,
review, the split, and the files' sha256. The same facts in machine form are card.json (export.py).
"""

import yaml

SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M")]
SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}  # the held-out (eval) rows are the `test` split
TRAINERS = {"sft": "SFTTrainer", "dpo": "DPOTrainer", "kto": "KTOTrainer"}


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
    """The README.md text: front matter, then the lineage."""
    matter = yaml.safe_dump(front_matter(snapshot), sort_keys=False, allow_unicode=True)
    return f"---\n{matter}---\n\n{_prose(snapshot)}"


def _prose(snapshot):
    card, counts = snapshot.card, snapshot.counts
    lineage, review, scrub, split = card["lineage"], card.get("review", {}), card["scrubbing"], card["split"]
    filters = ", ".join([f"{key} {value}" for key, value in snapshot.filters.items() if value and key != "reviewed"]
                        + (["approved items only"] if snapshot.filters.get("reviewed") else [])) or "none"
    sources = ", ".join(f"{count} from {source}" for source, count in counts.get("sources", {}).items()) or "none"
    lines = [
        f"# chatsite snapshot {snapshot.pk}: {snapshot.format.upper()}",
        "",
        f"Rows in TRL's conversational {snapshot.format.upper()} format (columns: {', '.join(card['columns'])}), "
        f"for `{TRAINERS[snapshot.format]}`: {counts.get('train', 0)} train and {counts.get('eval', 0)} test rows.",
        "",
        "```python",
        "from datasets import load_dataset",
        'dataset = load_dataset("path/to/this/folder")',
        "```",
        "",
        "## Where the rows come from",
        "",
        f"Exported by chatsite on {snapshot.created_at:%Y-%m-%d %H:%M} UTC from {lineage['feedback']} feedback rows "
        f"(ratings, reasons, corrections of users of the chat) and {lineage['preferences']} preferences (preferred "
        f"answers, side-by-side verdicts, blind arena votes). Rows by source: {sources}. Filters: {filters}. "
        f"{counts.get('duplicates_removed', 0)} exact duplicate rows were dropped.",
        "",
        "Only conversations whose owners allowed their use for training, as of the export, are in it. The "
        "assistant answers were written by language models served by chatsite; the prompts and corrections "
        "by its users.",
        "",
        "## Review",
        "",
        _review_prose(review),
        "",
        "## Personal data",
        "",
        ("E-mail, phone and IP addresses were replaced by the placeholders "
         f"{', '.join(scrub['placeholders'])} ({_replaced(scrub['replaced'])})." if scrub["enabled"] else
         "Not scrubbed: the text is as the users wrote it."),
        "",
        "## Split",
        "",
        f"A row is in `test` when the sha256 of its prompt is below {split['eval_fraction']} of the hash range, "
        "so one prompt's rows stay together and the same prompt lands in the same split in every export.",
        "",
        "## Files",
        "",
        f"- `{SPLIT_FILES['train']}`: sha256 `{snapshot.train_sha256}`",
        f"- `{SPLIT_FILES['test']}`: sha256 `{snapshot.eval_sha256}`",
        "- `card.json`: these facts for programs",
        "",
        f"License: {snapshot.license}.",
        "",
    ]
    return "\n".join(lines)


def _review_prose(review):
    if not review.get("items"):
        return "No row was reviewed: these are the users' own ratings and corrections."
    kappa = review.get("fleiss_kappa")
    agreement = (f" Fleiss' kappa over the {review['fleiss_items']} items decided by the same number of reviewers: "
                 f"{kappa:.3f}." if kappa is not None else "")
    only = ("Only items the reviewers approved are in it, with the corrections as they approved them (preferences, "
            "which are not reviewed, are left out). " if review.get("approved_only") else "")
    return (f"{only}{review['items']} of its feedback items were reviewed by {review['reviewers']} reviewer(s), "
            f"{review['reviews_per_item']} decision(s) asked per item.{agreement}")


def _replaced(replaced):
    return ", ".join(f"{count} {kind}" for kind, count in replaced.items()) or "none found"
