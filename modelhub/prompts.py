"""How a conversation becomes a prompt for a causal LM.

A causal LM produces the reply one token at a time, each conditioned on the prompt
and everything generated so far. We format the conversation with the tokenizer's
own chat template and cut the oldest turns when it would not fit the context
window (saying how many were cut). The model runner (engine/model_runner.py) opens every
sequence with `fit_prompt`, whose `Prompt` keeps the exact text the model was given,
and `template_hash` names the chat template that rendered it. A model whose server
applies the template itself (remote.py) can only show the messages sent (`messages_as_sent`).
"""

import hashlib
import json
from dataclasses import dataclass

from modelhub.options import ModelhubError, PromptTooLong


@dataclass(frozen=True)
class Prompt:
    """A reply's prompt exactly as the model got it: its token ids, their text, and how many
    of the oldest history messages were left out to fit the context window."""

    ids: list
    text: str
    left_out: int = 0


def chat_template_sha256(tokenizer_or_template):
    """The SHA-256 (hex) of a chat template: the tokenizer's `chat_template` string as given (a dict of
    named templates as sorted JSON; none as ""), UTF-8 encoded. A fine-tune records it (the template
    the adapter learnt); serving the adapter under another one is a mismatch."""
    template = getattr(tokenizer_or_template, "chat_template", tokenizer_or_template) or ""
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def template_hash(tokenizer_or_template):
    """The first 16 hex digits of `chat_template_sha256`: what a reply and an adapter record.
    Equal hashes: the same template renders the same prompt from the same messages."""
    return chat_template_sha256(tokenizer_or_template)[:16]


def messages_as_sent(messages):
    """What chatsite can show of a prompt it does not render (a remote server applies its own
    chat template): the JSON messages it sent."""
    return json.dumps(list(messages), ensure_ascii=False, indent=2)


def render_text(tokenizer, messages, think=None, tools=None):
    """The prompt's text; a history that ends with an assistant turn is continued, not answered.

    An assistant turn's `reasoning_content` (what a model that thinks first wrote before its answer) is
    handed to the template under the name it reads (gpt-oss's reads `thinking`); the template decides
    what of it to keep. `think` (True/False) is the template's `enable_thinking`; None leaves its default.
    `tools`: OpenAI function tools, rendered by the template (which also renders the turns' `tool_calls`
    and the `tool` turns' results).
    """
    messages = [_with_reasoning_field(tokenizer, message) for message in messages]
    extra = {} if think is None else {"enable_thinking": think}
    if tools:
        extra["tools"] = list(tools)
    if messages and messages[-1]["role"] == "assistant":
        return tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False, **extra)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)


def reasoning_field(tokenizer):
    """The name under which the tokenizer's response template parses (and its chat template reads) an
    assistant turn's reasoning: `reasoning_content` unless the template says `thinking`."""
    fields = (getattr(tokenizer, "response_template", None) or {}).get("fields", {})
    return "thinking" if "thinking" in fields and "reasoning_content" not in fields else "reasoning_content"


def thinks_on_request(tokenizer):
    """Whether the model's chat template takes `enable_thinking` (a reasoning switch per conversation)."""
    template = tokenizer.chat_template or ""
    return "enable_thinking" in (template if isinstance(template, str) else json.dumps(template))


def _with_reasoning_field(tokenizer, message):
    reasoning = message.get("reasoning_content")
    field = reasoning_field(tokenizer)
    if not reasoning or field == "reasoning_content":
        return message
    return {**{key: value for key, value in message.items() if key != "reasoning_content"}, field: reasoning}


def encode(tokenizer, text):
    # As apply_chat_template(tokenize=True) does: the template writes the special tokens itself.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt(tokenizer, messages):
    """Prompt token ids (see render_text)."""
    return encode(tokenizer, render_text(tokenizer, messages))


def build_prompt(tokenizer, messages, context_length, max_new_tokens):
    """Token ids of the longest suffix of the history that fits, and how many messages were cut."""
    prompt = fit_prompt(tokenizer, messages, context_length, max_new_tokens)
    return prompt.ids, prompt.left_out


def fit_prompt(tokenizer, messages, context_length, max_new_tokens, think=None, tools=None):
    """The `Prompt` of the longest suffix of the history that fits, rendered once per try.

    The system prompt is always kept, and so is the last message; the kept history
    starts with a user turn, as strict chat templates require.
    """
    budget = context_length - max_new_tokens
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    if not turns:
        raise ModelhubError(
            "there is nothing to answer: the conversation has no message with text", code="empty_prompt"
        )
    starts = [i for i, m in enumerate(turns) if m["role"] == "user"] or [0]
    starts = [s for s in starts if s <= len(turns) - 1]

    def fits(start):
        text = render_text(tokenizer, system + turns[start:], think, tools)
        ids = encode(tokenizer, text)
        return Prompt(ids, text, start) if len(ids) <= budget else None

    prompt = fits(starts[0])
    if prompt is not None:
        return prompt
    # Fit is monotonic in the start: binary search for the earliest start that fits.
    lo, hi, best = 1, len(starts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = fits(starts[mid])
        if candidate is None:
            lo = mid + 1
        else:
            best, hi = candidate, mid - 1
    if best is None:
        raise PromptTooLong(
            f"the last message does not fit the model's context window of {context_length} tokens "
            f"with room for {max_new_tokens} new tokens; shorten it or lower max_new_tokens"
        )
    return best
