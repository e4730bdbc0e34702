"""Evaluation reports: a base model and adapters of it, side by side on a snapshot's held-out rows.

    EvaluationReport.objects.create_for(snapshot, base, adapters)   checks the input, stores a queued report
    report.run()                                                    generates, scores, stores (blocking)

The rows are the snapshot's eval file: each row's prompt and its reference answer (an SFT
row's last message, the chosen answer of a DPO row, a KTO completion labelled good). The
scoring is modelhub's (`modelhub.training.evaluation.evaluate`: answers through the normal serving
path, perplexity of the references, BLEU, chrF, ROUGE, distinct-n, lengths, and a paired
bootstrap interval of each difference against the base). Where the blind arena has votes
of an adapter against this base alone, its win rate there is added (ties and "both bad"
count half, as on the leaderboard).

`manage.py evaluate`, the snapshot and arena admin actions and a fine-tune job's end all
make reports the same way. A snapshot exported for another model (its `model` filter), one
without held-out rows, or adapters of another base are refused with EvaluationError before
anything is stored.
"""

import json
import logging

from django.conf import settings
from django.db import models
from django.utils import timezone

from conversations.models.arena import Arena
from conversations.models.datasets import DatasetSnapshot, SnapshotChanged
from conversations.models.message import storable
from modelhub.api import candidate_name, evaluate
from modelhub.models import ModelSpec

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """The evaluation cannot be made as asked: the message says why."""


def _storable(value):
    """JSON fit for any database: each string `storable`, as a reply's text is (a model's answers can hold NUL)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value


def reference_rows(snapshot, limit=None):
    """(prompt messages, reference answer) of the snapshot's held-out rows, in file order; at most `limit`."""
    try:
        eval_path = snapshot.verify()["eval"]
    except SnapshotChanged as exc:
        raise EvaluationError(str(exc)) from exc
    rows = []
    with open(eval_path, encoding="utf-8") as handle:
        for line in handle:
            row = _reference(json.loads(line))
            if row is not None:
                rows.append(row)
            if limit and len(rows) >= limit:
                break
    return rows


def _reference(row):
    if "messages" in row:
        prompt, answer = row["messages"][:-1], row["messages"][-1:]
    elif "chosen" in row:
        prompt, answer = row["prompt"], row["chosen"][-1:]
    elif row.get("label") is True:
        prompt, answer = row["prompt"], row["completion"][-1:]
    else:
        return None
    turns = [turn for turn in prompt if turn.get("role") != "system"]
    if not turns or turns[-1].get("role") != "user" or not answer or answer[0].get("role") != "assistant":
        return None
    return prompt, answer[0]["content"]


def arena_win_rates(base, adapters):
    """{candidate name: {"win_rate", "votes"}} from arenas of each adapter against the base alone."""
    found = {}
    for adapter in adapters:
        totals = dict.fromkeys(["win", "tie", "both_bad", "voted"], 0)
        for arena in Arena.objects.filter(base=base, candidate=adapter, opponent=None):
            results = arena.results()
            for key in totals:
                totals[key] += results[key]
        if totals["voted"]:
            wins = totals["win"] + 0.5 * (totals["tie"] + totals["both_bad"])
            found[candidate_name(base, adapter)] = {"win_rate": wins / totals["voted"], "votes": totals["voted"]}
    return found


class EvaluationReportQuerySet(models.QuerySet):
    def create_for(self, snapshot, base, adapters, created_by=None, max_rows=None, options=None, seed=0):
        """A queued report of `base` and `adapters` (Adapter rows of it) on the snapshot's held-out rows.

        Raises EvaluationError, storing nothing, for a snapshot exported for another model, one with no
        held-out rows (or whose files changed), an adapter of another base, or no adapter at all."""
        exported_for = (snapshot.filters or {}).get("model") or ""
        if exported_for and exported_for != base.name:
            raise EvaluationError(f"{snapshot} was exported from {exported_for}'s answers, not {base.name}'s")
        strangers = [adapter.name for adapter in adapters if adapter.base_id != base.pk]
        if strangers:
            raise EvaluationError(f"{', '.join(strangers)}: not adapters of {base.name}")
        if not adapters:
            raise EvaluationError(f"{base.name} has no adapter to compare it with")
        limit = max_rows or settings.EVALUATION_MAX_ROWS
        if not reference_rows(snapshot, limit):
            raise EvaluationError(f"{snapshot} has no held-out rows with a reference answer to evaluate on")
        # Answers as long as the base allows, up to EVALUATION_MAX_NEW_TOKENS: held-out answers are short.
        options = {"max_new_tokens": min(base.max_new_tokens, settings.EVALUATION_MAX_NEW_TOKENS), **(options or {})}
        return self.create(
            snapshot=snapshot,
            base=base,
            adapter_names=[adapter.name for adapter in adapters],
            max_rows=limit,
            options=options,
            seed=seed,
            created_by=created_by,
        )


class EvaluationReport(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    snapshot = models.ForeignKey(DatasetSnapshot, null=True, on_delete=models.SET_NULL, related_name="evaluations")
    base = models.ForeignKey(ModelSpec, on_delete=models.CASCADE, related_name="+")
    adapter_names = models.JSONField(default=list, help_text="The adapters compared with the base, in order.")
    candidates = models.JSONField(default=list, blank=True, help_text="Names as shown: the base first.")
    max_rows = models.PositiveIntegerField(help_text="At most this many held-out rows are evaluated.")
    options = models.JSONField(default=dict, blank=True, help_text="Generation overrides (greedy always).")
    seed = models.BigIntegerField(default=0, help_text="Seeds the bootstrap's resamples.")
    resamples = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True, help_text="candidate -> metric -> value")
    differences = models.JSONField(
        default=dict, blank=True, help_text="candidate -> metric -> difference to the base, 95% interval"
    )
    arena = models.JSONField(default=dict, blank=True, help_text="candidate -> arena win rate against the base")
    rows = models.JSONField(default=list, blank=True, help_text="Per row: prompt, reference, each answer, NLL.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = EvaluationReportQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"evaluation #{self.pk}: {self.base.name} vs {', '.join(self.adapter_names)}"

    def adapters(self):
        """The Adapter rows compared, in order (disabled ones too: a fine-tune's adapter is, until promoted)."""
        by_name = {adapter.name: adapter for adapter in self.base.adapters.filter(name__in=self.adapter_names)}
        missing = [name for name in self.adapter_names if name not in by_name]
        if missing:
            raise EvaluationError(f"{self.base.name} no longer has the adapter(s) {', '.join(missing)}")
        return [by_name[name] for name in self.adapter_names]

    def run(self, resamples=None):
        """Generate, score and store; a failure is stored (status failed, its error) and raised again."""
        self.status, self.error = self.Status.RUNNING, ""
        self.save(update_fields=["status", "error"])
        try:
            if self.snapshot is None:
                raise EvaluationError("the snapshot was deleted")
            adapters = self.adapters()
            rows = reference_rows(self.snapshot, self.max_rows)
            resamples = settings.EVALUATION_RESAMPLES if resamples is None else resamples
            result = evaluate(self.base, adapters, rows, self.options, resamples=resamples, seed=self.seed)
        except Exception as exc:
            self.finish(self.Status.FAILED, error=getattr(exc, "message", None) or str(exc) or type(exc).__name__)
            raise
        self.candidates, self.metrics, self.differences = result["candidates"], result["metrics"], result["differences"]
        self.rows, self.resamples = _storable(result["rows"]), resamples
        self.arena = arena_win_rates(self.base, adapters)
        self.finish(self.Status.SUCCEEDED)
        return self

    def finish(self, status, error=""):
        self.status, self.error, self.finished_at = status, error, timezone.now()
        self.save()

    def as_json(self):
        """The whole report, as the admin's "Export JSON" gives it."""
        return {
            "id": self.pk,
            "snapshot": self.snapshot_id,
            "base": self.base.name,
            "candidates": self.candidates,
            "adapters": self.adapter_names,
            "status": self.status,
            "error": self.error,
            "options": self.options,
            "seed": self.seed,
            "resamples": self.resamples,
            "max_rows": self.max_rows,
            "metrics": self.metrics,
            "differences": self.differences,
            "arena": self.arena,
            "rows": self.rows,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }
