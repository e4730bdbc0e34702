"""Training examples from feedback and preferences, in TRL's conversational formats.

The prompt of an answer is what the model saw: the conversation's system prompt (if
any) and the branch up to the user message the answer replies to
(`Conversation.history(upto=answer.parent)`). Rows carry exactly TRL's columns:

- sft: {"messages": prompt + [corrected answer]}                   from corrections
- dpo: {"prompt", "chosen": [answer], "rejected": [answer]}        from corrections
       (chosen = correction, rejected = original), sibling preferences, side-by-side
       verdicts, arena votes, and thumbs: an answer rated up against a sibling answer
       (same question) the same user rated down
- kto: {"prompt", "completion": [answer], "label": bool}           from thumbs (up: true,
       down: false), "both bad" verdicts (both answers false) and corrections (the correction
       true, the answer it corrects false, as DPO pairs them); ties give nothing

Only conversations that allow training count (`for_training`), read at export time.

Reasoning: an assistant message of a reply the model reasoned before answering carries that reasoning in
`reasoning_content`, apart from the answer in `content` (the field TRL's training chat templates render as
the think block): the answers and the assistant turns of the prompt alike. A correction replaces the answer
only: it keeps the reply's reasoning unless its author dropped it (`Feedback.correction_keeps_reasoning`).
`build(..., include_reasoning=False)` leaves every `reasoning_content` out (`without_reasoning`).
"""

import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from itertools import product

from django.db.models import Q
from django.utils import timezone

from conversations.models import Feedback, Message, Preference, Review, Verdict

FORMATS = ("sft", "dpo", "kto")
SOURCES = ("correction", "thumbs", "sibling", "comparison", "arena")
REASONING = "reasoning_content"  # the key of an assistant message's reasoning, as TRL's templates read it
ANSWERS = ("chosen", "rejected", "completion")  # the columns of answers (SFT's is the last of its messages)


@dataclass
class Example:
    row: dict
    source: str
    feedback_ids: set = field(default_factory=set)
    preference_ids: set = field(default_factory=set)

    def prompt(self):
        """The conversation before the answer: what the split is keyed on."""
        return self.row["messages"][:-1] if "messages" in self.row else self.row["prompt"]

    def prompt_text(self):
        """The prompt as it reads without reasoning: the split's key, the same whether reasoning is exported."""
        return json.dumps(prompt_without_reasoning(self.prompt()), ensure_ascii=False, sort_keys=True)

    def has_reasoning(self):
        return any(REASONING in turn for column in self.row.values() if isinstance(column, list) for turn in column)


@dataclass(frozen=True)
class Filters:
    """Which feedback an export takes: dates (inclusive, of the last edit), model, adapter, tag; `reviewed`:
    only feedback the review queue approved (Review.objects.approved_feedback), with the corrections as approved, and
    no preferences (they are not reviewed)."""

    since: date | None = None
    until: date | None = None
    model: str = ""
    adapter: str = ""
    tag: str = ""
    reviewed: bool = False

    def as_dict(self):
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "model": self.model,
            "adapter": self.adapter,
            "tag": self.tag,
            "reviewed": self.reviewed,
        }

    def _dated(self, queryset):
        if self.since:
            queryset = queryset.filter(updated_at__gte=_start_of(self.since))
        if self.until:
            queryset = queryset.filter(updated_at__lt=_start_of(self.until + timedelta(days=1)))
        return queryset

    def feedback(self):
        rows = Feedback.objects.for_training().filter(message__in=Message.objects.rateable())
        rows = self._dated(rows)
        if self.model:
            rows = rows.filter(message__model_name=self.model)
        if self.adapter:
            rows = rows.filter(message__adapter_name=self.adapter)
        if self.tag:
            rows = rows.filter(tags__name=self.tag)
        if self.reviewed:
            rows = rows.filter(pk__in=Review.objects.approved_feedback().values("pk"))
        return rows.select_related("message__conversation__model").order_by("pk")

    def corrections(self):
        """The feedback with a correction, as it will be trained on: the user's, or (reviewed) the one its
        latest approval left, which may be edited or emptied."""
        if not self.reviewed:
            return list(self.feedback().exclude(correction=""))
        approved_corrections = dict(Review.objects.approved_feedback().values_list("pk", "reviewed_correction"))
        found = []
        for feedback in self.feedback():
            feedback.correction = approved_corrections.get(feedback.pk) or ""
            if feedback.correction:
                found.append(feedback)
        return found

    def preferences(self):
        """Preferences carry no tags and are not reviewed: a tag filter or `reviewed` leaves none."""
        if self.tag or self.reviewed:
            return Preference.objects.none()
        rows = self._dated(Preference.objects.for_training())
        rateable = Message.objects.rateable()
        rows = rows.filter(chosen__in=rateable, rejected__in=rateable)
        if self.model:
            rows = rows.filter(Q(chosen__model_name=self.model) | Q(rejected__model_name=self.model))
        if self.adapter:
            rows = rows.filter(Q(chosen__adapter_name=self.adapter) | Q(rejected__adapter_name=self.adapter))
        return rows.select_related("chosen__conversation__model", "rejected").order_by("pk")


def _iso(day):
    return day.isoformat() if day else None


def _start_of(day):
    return timezone.make_aware(datetime.combine(day, time.min))


class Prompts:
    """Prompts of answers, loading each conversation's messages once."""

    def __init__(self):
        self._loaded = {}

    def before(self, answer):
        conversation = answer.conversation
        if conversation.pk not in self._loaded:
            messages = list(conversation.messages.defer(*Message.LARGE_FIELDS))
            self._loaded[conversation.pk] = (messages, {m.pk: m for m in messages})
        messages, by_id = self._loaded[conversation.pk]
        parent = by_id.get(answer.parent_id)
        if parent is None:
            return None
        history = conversation.history(upto=parent, loaded=messages)
        return history if history and history[-1]["role"] == "user" else None


def assistant(text, reasoning=""):
    """One assistant message: the answer in `content`, the reasoning (if any) apart from it."""
    return [{"role": "assistant", "content": text, **({REASONING: reasoning} if reasoning else {})}]


def answer(message):
    """A reply as the model wrote it: its answer and its reasoning."""
    return assistant(message.content, message.reasoning)


def corrected(feedback):
    """The correction in place of the answer; the reply's reasoning stays unless the user dropped it."""
    return assistant(feedback.correction, feedback.message.reasoning if feedback.correction_keeps_reasoning else "")


def turns_without_reasoning(turns):
    return [{key: value for key, value in turn.items() if key != REASONING} for turn in turns]


def prompt_without_reasoning(turns):
    """Prompt turns without reasoning; a turn left with no text goes, as `history()` leaves out one with none."""
    return [turn for turn in turns_without_reasoning(turns) if turn["role"] != "assistant" or turn["content"]]


def without_reasoning(row):
    """A row with no `reasoning_content` anywhere: in the prompt's turns or in its answers."""
    if "messages" in row:
        *prompt, last = row["messages"]
        return {"messages": prompt_without_reasoning(prompt) + turns_without_reasoning([last])}
    row = {**row, "prompt": prompt_without_reasoning(row["prompt"])}
    for column in ANSWERS:
        if column in row:
            row[column] = turns_without_reasoning(row[column])
    return row


def build(format, filters, include_reasoning=True):
    """Every example of `format` that the feedback and preferences matching `filters` give; the models'
    reasoning as `reasoning_content` of their messages, or (`include_reasoning=False`) nowhere."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    prompts = Prompts()
    builders = {
        "sft": [_sft_corrections],
        "dpo": [_dpo_corrections, _dpo_preferences, _dpo_thumbs],
        "kto": [_kto_thumbs, _kto_both_bad, _kto_corrections],
    }[format]
    built = [example for builder in builders for example in builder(filters, prompts)]
    if not include_reasoning:
        for example in built:
            example.row = without_reasoning(example.row)
    return built


def _sft_corrections(filters, prompts):
    for feedback in filters.corrections():
        prompt = prompts.before(feedback.message)
        if prompt:
            yield Example({"messages": prompt + corrected(feedback)}, "correction", {feedback.pk})


def _dpo_corrections(filters, prompts):
    for feedback in filters.corrections():
        original = feedback.message.content
        prompt = prompts.before(feedback.message)
        if prompt and original.strip() and original.strip() != feedback.correction.strip():
            row = {"prompt": prompt, "chosen": corrected(feedback), "rejected": answer(feedback.message)}
            yield Example(row, "correction", {feedback.pk})


def _dpo_preferences(filters, prompts):
    for preference in filters.preferences().filter(verdict=Verdict.CHOSEN):
        prompt = prompts.before(preference.chosen)
        if prompt:
            row = {
                "prompt": prompt,
                "chosen": answer(preference.chosen),
                "rejected": answer(preference.rejected),
            }
            yield Example(row, preference.source, preference_ids={preference.pk})


def _dpo_thumbs(filters, prompts):
    """An answer rated up against each sibling answer the same user rated down."""
    groups = {}
    for feedback in filters.feedback().exclude(rating=""):
        key = (feedback.user_id, feedback.message.conversation_id, feedback.message.parent_id)
        groups.setdefault(key, {"up": [], "down": []})[feedback.rating].append(feedback)
    for group in groups.values():
        for up, down in product(group["up"], group["down"]):
            prompt = prompts.before(up.message)
            if prompt:
                row = {
                    "prompt": prompt,
                    "chosen": answer(up.message),
                    "rejected": answer(down.message),
                }
                yield Example(row, "thumbs", {up.pk, down.pk})


def _kto_thumbs(filters, prompts):
    for feedback in filters.feedback().exclude(rating=""):
        prompt = prompts.before(feedback.message)
        if prompt:
            row = {
                "prompt": prompt,
                "completion": answer(feedback.message),
                "label": feedback.rating == Feedback.Rating.UP,
            }
            yield Example(row, "thumbs", {feedback.pk})


def _kto_corrections(filters, prompts):
    """The correction a desirable completion, the answer it corrects an undesirable one (a row the thumbs
    already gave is kept once, with the thumbs as its source: thumbs come first)."""
    for feedback in filters.corrections():
        original = feedback.message.content
        prompt = prompts.before(feedback.message)
        if not prompt:
            continue
        yield Example({"prompt": prompt, "completion": corrected(feedback), "label": True}, "correction", {feedback.pk})
        if original.strip() and original.strip() != feedback.correction.strip():
            yield Example(
                {"prompt": prompt, "completion": answer(feedback.message), "label": False}, "correction", {feedback.pk}
            )


def _kto_both_bad(filters, prompts):
    for preference in filters.preferences().filter(verdict=Verdict.BOTH_BAD):
        prompt = prompts.before(preference.chosen)
        if prompt:
            for message in (preference.chosen, preference.rejected):
                row = {"prompt": prompt, "completion": answer(message), "label": False}
                yield Example(row, preference.source, preference_ids={preference.pk})
