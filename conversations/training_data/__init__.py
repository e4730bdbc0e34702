"""From users' feedback to training data: TRL examples, PII scrubbing and frozen snapshots.

    examples.py   the rows of each format (sft, dpo, kto) that feedback and preferences give
    scrub.py      e-mail, phone and IP addresses replaced by placeholders
    export.py     `export_snapshot`: examples -> scrubbed, deduplicated, split JSONL files + card, in a
                  folder of their own
    dataset_card.py  the folder's README.md: a Hugging Face dataset card (front matter, lineage)

Their models (Feedback, Preference, PrivacySettings, DatasetSnapshot) are in conversations/models/.
"""
