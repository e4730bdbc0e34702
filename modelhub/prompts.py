"""How a conversation becomes a prompt for a causal LM.

A causal LM produces the reply one token at a time, each conditioned on the prompt
and everything generated so far. We format the conversation with the tokenizer's
own chat template and cut the oldest turns when it would not fit the context
window (saying how many were cut). The model runner (batching.py) opens every
sequence with `build_prompt`.
"""

from modelhub.options import PromptTooLong


def render_prompt(tokenizer, messages):
    """Prompt token ids; a history that ends with an assistant turn is continued, not answered."""
    if messages and messages[-1]["role"] == "assistant":
        ids = tokenizer.apply_chat_template(
            messages, continue_final_message=True, tokenize=True, return_dict=False
        )
    else:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids)


def build_prompt(tokenizer, messages, context_length, max_new_tokens):
    """Token ids of the longest suffix of the history that fits, and how many messages were cut.

    The system prompt is always kept, and so is the last message; the kept history
    starts with a user turn, as strict chat templates require.
    """
    budget = context_length - max_new_tokens
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    starts = [i for i, m in enumerate(turns) if m["role"] == "user"] or [0]
    starts = [s for s in starts if s <= len(turns) - 1]

    def fits(start):
        ids = render_prompt(tokenizer, system + turns[start:])
        return ids if len(ids) <= budget else None

    ids = fits(starts[0])
    if ids is not None:
        return ids, starts[0]
    # Fit is monotonic in the start: binary search for the earliest start that fits.
    lo, hi, best = 1, len(starts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = fits(starts[mid])
        if candidate is None:
            lo = mid + 1
        else:
            best, hi = (candidate, starts[mid]), mid - 1
    if best is None:
        raise PromptTooLong(
            f"the last message does not fit the model's context window of {context_length} tokens "
            f"with room for {max_new_tokens} new tokens; shorten it or lower max_new_tokens"
        )
    return best
