"""A reply's token probabilities as its owner sees them (the Inspect view), and the start of a
branch that continues from one of a token's alternatives.

modelhub keeps them while it samples (modelhub/decoding/logprobs.py), where the model's switch is on
(`ModelSpec.token_probabilities`); `Message.finish` stores them with the reply
(`Message.token_probs`). A branch from an alternative is a new answer beside the inspected one:
it begins with the tokens before the chosen position and the alternative, with their
probabilities, and the model continues that text (turns.py, kind "alternative").
"""

import math
from dataclasses import dataclass

from django.shortcuts import render
from django.views.decorators.http import require_GET

from conversations.access.permissions import chat_required, reply_for
from conversations.errors import ChatError
from conversations.models import Message
from modelhub.models import ModelSpec

BANDS = (0.9, 0.7, 0.5, 0.3)  # a token's colour: p4 (≥ 0.9, sure) … p0 (< 0.3, a coin toss or worse)


@dataclass
class Alternative:
    index: int
    text: str
    probability: float
    written: bool  # the token the reply has at this position


@dataclass
class TokenRow:
    index: int
    text: str
    probability: float
    alternatives: list
    ends: bool = False  # the end-of-turn token, last: it adds no text
    partial: bool = False  # a byte of a character the next token completes: it adds no text by itself
    cut: bool = False  # past the reply's text: a stop sequence the reply was cut before

    @property
    def band(self):
        return next((4 - n for n, floor in enumerate(BANDS) if self.probability >= floor), 0)


def token_rows(message):
    """The reply's tokens as the Inspect view lists them, each with its alternatives, best first."""
    rows, at = [], 0
    record = message.token_probs or []
    for index, (token, text, logprob, alts) in enumerate(record):
        alternatives = [
            Alternative(n, alt_text, math.exp(alt_lp), alt == token) for n, (alt, alt_text, alt_lp) in enumerate(alts)
        ]
        cut = at >= len(message.content) and bool(text)
        last = index == len(record) - 1
        rows.append(
            TokenRow(
                index,
                text,
                math.exp(logprob),
                alternatives,
                ends=last and not text,
                partial=not last and not text,
                cut=cut,
            )
        )
        at += len(text)
    return rows


def basis(options):
    """Which scores the probabilities are: the page says so above the tokens."""
    penalty = options.get("repetition_penalty", 1.0)
    penalised = f" after the repetition penalty ({penalty})" if penalty != 1.0 else ""
    if not options.get("temperature"):
        return (
            f"Probabilities are the model's own next-token distribution{penalised}; decoding was greedy, so "
            "the likeliest token was always written."
        )
    cuts = [f"temperature {options['temperature']}"]
    if options.get("top_k"):
        cuts.append(f"top-k {options['top_k']}")
    if options.get("top_p", 1.0) < 1.0:
        cuts.append(f"top-p {options['top_p']}")
    if penalty != 1.0:
        cuts.insert(0, f"repetition penalty {penalty}")
    return (
        f"Probabilities are those the sampler drew from, after {', '.join(cuts)}: tokens that top-k or "
        "top-p cut off had no chance and are not listed."
    )


def why_none(message):
    """Why a reply has no token probabilities, in words for its owner."""
    if message.status == Message.Status.STREAMING:
        return "This reply is still being written; inspect it once it ends."
    spec = ModelSpec.objects.filter(name=message.model_name).first()
    if spec is None:
        return (
            f"No token probabilities were kept for this reply, and its model {message.model_name!r} is no "
            "longer registered."
        )
    if spec.backend != ModelSpec.Backend.TRANSFORMERS:
        return f"{spec} runs outside chatsite (a remote server or a script), so chatsite saw no token probabilities."
    if not spec.token_probabilities:
        return (
            f"{spec} does not keep token probabilities: an admin can turn on “Token probabilities” "
            "in the model's settings; replies written after that can be inspected."
        )
    return "No token probabilities were kept for this reply (it was written before they were kept, or it failed)."


def branch_start(message, index, choice):
    """(text, token probabilities) a branch from alternative `choice` at token `index` begins with."""
    record = message.token_probs
    if message.role != Message.Role.ASSISTANT or record is None:
        raise ChatError("not_inspectable", "This reply kept no token probabilities, so it has no alternatives.")
    if not 0 <= index < len(record) or not 0 <= choice < len(record[index][3]):
        raise ChatError("unknown_alternative", f"This reply has no alternative {choice} at token {index}.")
    alt, alt_text, alt_lp = record[index][3][choice]
    if not alt_text:
        raise ChatError(
            "empty_alternative",
            "That alternative adds no text (it ends the reply there), so there is nothing to continue from.",
        )
    prefix = "".join(text for _, text, _, _ in record[:index])
    return prefix + alt_text, record[:index] + [[alt, alt_text, alt_lp, record[index][3]]]


@chat_required
@require_GET
def message_inspect(request, pk, message_id):
    """An answer's tokens coloured by probability, with their alternatives (404 for anyone else's)."""
    conversation, message = reply_for(request, pk, message_id)
    kept = message.token_probs is not None
    context = {
        "conversation": conversation,
        "message": message,
        "rows": token_rows(message) if kept else [],
        "basis": basis(message.generation_options) if kept else "",
        "why_none": "" if kept else why_none(message),
        "in_chat": bool(request.htmx),  # in the chat page, an alternative is a button that branches from it
    }
    template = "conversations/inspect.html#inspect" if request.htmx else "conversations/inspect.html"
    return render(request, template, context)
