"""How a conversation becomes a prompt for a causal LM, and a reply generated on its own.

A causal LM produces the reply one token at a time, each conditioned on the prompt
and everything generated so far. We format the conversation with the tokenizer's
own chat template and cut the oldest turns when it would not fit the context
window (saying how many were cut). Decoding itself lives in batching.py (many
replies at once, in the model's worker) and decoding.py (sampling, detokenizing).
"""

import time

from modelhub.options import GenerationOptions, PromptTooLong


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


def stream_reply(loaded, messages, options: GenerationOptions, emit, is_cancelled, adapter=None):
    """Generate one reply on its own; call emit(text) for each chunk; return its Usage.

    The same decode machinery the model's worker batches (batching.py), driven for
    a single sequence: warm-up, samples, scripts. `is_cancelled()` is checked before
    every decode step, so a stop takes effect within one step.
    """
    from modelhub.batching import Decoder

    decoder = Decoder(loaded)
    seq = decoder.open(messages, options, adapter)
    while not (seq.ready or seq.error):
        decoder.prefill([seq], decoder.prefill_chunk)
    if seq.error is not None:
        raise seq.error
    while True:
        text = seq.take_text()
        if text:
            emit(text)
        if seq.finish_reason:
            break
        if is_cancelled():
            seq.end("cancelled")
            continue  # emit what the detokenizer held back
        decoder.decode()
        if seq.error is not None:
            raise seq.error
    decoder.release(seq, keep=False)
    seq.usage.finish_reason = seq.finish_reason
    seq.usage.duration = time.monotonic() - seq.started
    return seq.usage


def generate_text(model, tokenizer, messages, max_new_tokens=64):
    """Greedy reply as one string (for samples and quick checks, not for serving)."""
    from modelhub.loading import LoadedModel

    context = getattr(model.config, "max_position_embeddings", 2048)
    loaded = LoadedModel(model, tokenizer, str(model.device), str(model.dtype), context)
    chunks = []
    stream_reply(loaded, messages, GenerationOptions(temperature=0, max_new_tokens=max_new_tokens), chunks.append, lambda: False)
    return "".join(chunks).strip()
