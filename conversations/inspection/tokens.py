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
    thinking: bool = False  # the model's reasoning (and the tags its template writes around it), before the answer
    call: bool = False  # past the answer: a tool call the model wrote (the reply keeps it apart, parsed)

    @property
    def band(self):
        return next((4 - n for n, floor in enumerate(BANDS) if self.probability >= floor), 0)


def answer_span(message):
    """(start, end): where the answer lies in the text the reply's tokens wrote, joined. Before it, a model
    that thinks first wrote its reasoning (with its template's tags around it); after it come a stop
    sequence the reply was cut before, or a tool call's text."""
    written = "".join(text for _, text, _, _ in message.token_probs or [])
    start = 0
    if message.reasoning:
        found = written.find(message.reasoning)
        start = found + len(message.reasoning) if found >= 0 else 0
        start = written.find(message.content, start) if message.content else len(written)
        start = max(start, 0)
    return start, start + len(message.content)


def token_rows(message):
    """The reply's tokens as the Inspect view lists them, each with its alternatives, best first."""
    rows, at = [], 0
    record = message.token_probs or []
    start, end = answer_span(message)
    for index, (token, text, logprob, alts) in enumerate(record):
        alternatives = [
            Alternative(n, alt_text, math.exp(alt_lp), alt == token) for n, (alt, alt_text, alt_lp) in enumerate(alts)
        ]
        past = at >= end and bool(text)
        last = index == len(record) - 1
        rows.append(
            TokenRow(
                index,
                text,
                math.exp(logprob),
                alternatives,
                ends=last and not text,
                partial=not last and not text,
                cut=past and not message.tool_calls,
                thinking=at < start,
                call=past and bool(message.tool_calls),
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
    """The fields a branch from alternative `choice` at token `index` begins with: the answer's text up to that
    token and the alternative, their token probabilities; a reply that thought first keeps its reasoning."""
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
    if token_rows(message)[index].thinking:
        raise ChatError(
            "alternative_in_thinking",
            "That token is part of the model's thinking: a branch starts from a token of the answer (the "
            "model's template would close an unfinished thought before going on).",
        )
    start, _ = answer_span(message)
    prefix = "".join(text for _, text, _, _ in record[:index])[start:]
    return {
        "content": prefix + alt_text,
        "token_probs": record[:index] + [[alt, alt_text, alt_lp, record[index][3]]],
        "reasoning": message.reasoning,
        "reasoning_tokens": message.reasoning_tokens,
        "reasoning_seconds": message.reasoning_seconds,
    }


@chat_required
@require_GET
def message_inspect(request, pk, message_id):
    """An answer's tokens coloured by probability, with their alternatives (404 for anyone else's)."""
    conversation, message = reply_for(request, pk, message_id)
    kept = message.token_probs is not None
    rows = token_rows(message) if kept else []
    context = {
        "conversation": conversation,
        "message": message,
        "thinking_rows": [row for row in rows if row.thinking],
        "rows": [row for row in rows if not row.thinking],
        "basis": basis(message.generation_options) if kept else "",
        "why_none": "" if kept else why_none(message),
        "in_chat": bool(request.htmx),  # in the chat page, an alternative is a button that branches from it
    }
    template = "conversations/inspect.html#inspect" if request.htmx else "conversations/inspect.html"
    return render(request, template, context)
