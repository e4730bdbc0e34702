"""Frozen training-data snapshots: what an export wrote (conversations/training_data/export.py).

A `DatasetSnapshot` records the format, filters, paths, sha256 of each file, counts, the
card, and exactly which Feedback and Preference rows produced its rows. Files are never
overwritten: a snapshot stays what it was. Deleting a conversation later removes its rows
from the database and from the snapshot's lineage, not from files already written: the
snapshot counts them as `withdrawn`, and the admin shows which snapshots still hold
someone's deleted words. Deleting a snapshot deletes its files.
"""

import hashlib
from pathlib import Path

from django.conf import settings
from django.db import models, transaction
from django.db.models.signals import post_delete, pre_delete
from django.dispatch import receiver
from django.utils import timezone

from conversations.models.feedback import Feedback, Preference

LICENSES = [  # Hugging Face license ids an admin may choose for a snapshot's card (the Hub's list has more)
    ("other", "other (say which in the card)"),
    ("unknown", "unknown"),
    ("cc-by-4.0", "CC BY 4.0"),
    ("cc-by-sa-4.0", "CC BY-SA 4.0"),
    ("cc-by-nc-4.0", "CC BY-NC 4.0"),
    ("cc0-1.0", "CC0 1.0"),
    ("odc-by", "ODC-By"),
    ("apache-2.0", "Apache 2.0"),
    ("mit", "MIT"),
]
FORMAT_CHOICES = [
    ("sft", "SFT (messages)"),
    ("dpo", "DPO (prompt, chosen, rejected)"),
    ("kto", "KTO (prompt, completion, label)"),
]


class SnapshotChanged(Exception):
    """A snapshot's file is missing or no longer matches the sha256 recorded when it was written."""


class DatasetSnapshot(models.Model):
    format = models.CharField(max_length=3, choices=FORMAT_CHOICES)
    filters = models.JSONField(default=dict, blank=True)
    scrubbed = models.BooleanField(default=True, help_text="E-mail, phone and IP addresses replaced by placeholders.")
    eval_fraction = models.FloatField()
    license = models.CharField(
        max_length=20, choices=LICENSES, default="other", help_text="The license its dataset card (README.md) states."
    )
    train_path = models.CharField(max_length=500)
    eval_path = models.CharField(max_length=500)
    card_path = models.CharField(max_length=500)
    train_sha256 = models.CharField(max_length=64)
    eval_sha256 = models.CharField(max_length=64)
    counts = models.JSONField(default=dict, blank=True)
    card = models.JSONField(default=dict, blank=True)
    feedback = models.ManyToManyField(Feedback, blank=True, related_name="snapshots")
    preferences = models.ManyToManyField(Preference, blank=True, related_name="snapshots")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    withdrawn = models.PositiveIntegerField(
        default=0,
        help_text="Feedback or preferences deleted since the export (with their conversation): "
        "their text is still in the files. Export again and delete this snapshot to drop it.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"snapshot #{self.pk} ({self.format}, {self.counts.get('train', 0)}+{self.counts.get('eval', 0)} rows)"

    @property
    def folder(self):
        """The snapshot's folder: train.jsonl, test.jsonl, card.json, README.md (loads with `load_dataset`)."""
        return Path(self.train_path).parent

    def files(self):
        """{"train": Path, "eval": Path}: what a fine-tuning run reads (call `verify()` first)."""
        return {"train": Path(self.train_path), "eval": Path(self.eval_path)}

    def dataset_ref(self):
        """What a fine-tuning job records about its data (modelhub's `FinetuneJob.dataset_ref`)."""
        return {
            "snapshot": self.pk,
            "format": self.format,
            "train_sha256": self.train_sha256,
            "eval_sha256": self.eval_sha256,
            "card": self.card_path,
        }

    def verify(self):
        """Raise SnapshotChanged unless both files still hold exactly what was exported."""
        for split, expected in (("train", self.train_sha256), ("eval", self.eval_sha256)):
            path = self.files()[split]
            if not path.is_file() or file_sha256(path) != expected:
                raise SnapshotChanged(f"snapshot #{self.pk}: {path} is missing or changed since the export")
        return self.files()


def file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@receiver(pre_delete, sender=Feedback)
@receiver(pre_delete, sender=Preference)
def _count_withdrawn(sender, instance, **kwargs):
    """A row some snapshot exported is going (its conversation or user is deleted): count it there."""
    field = "feedback" if sender is Feedback else "preferences"
    DatasetSnapshot.objects.filter(**{field: instance}).update(withdrawn=models.F("withdrawn") + 1)


@receiver(post_delete, sender=DatasetSnapshot)
def _delete_files(sender, instance, **kwargs):
    """The snapshot's files go with it (and its folder, if nothing else is in it), once the deletion is committed."""
    paths = [Path(p) for p in (instance.train_path, instance.eval_path, instance.card_path) if p]
    if paths:
        paths.append(paths[0].parent / "README.md")
    transaction.on_commit(lambda: _remove(paths))


def _remove(paths):
    for path in paths:
        path.unlink(missing_ok=True)
    if paths and paths[0].parent.is_dir() and not any(paths[0].parent.iterdir()):
        paths[0].parent.rmdir()
