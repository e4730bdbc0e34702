"""How a reply is generated with transformers: chat template -> generate -> streamer.

A causal LM produces the reply one token at a time, each conditioned on the prompt
and everything generated so far. We format the conversation with the tokenizer's
own chat template, cut the oldest turns when it would not fit the context window
(saying how many were cut), and let `model.generate` decode with a streamer that
hands text to the caller token by token, as soon as it is stable, and checks the
caller's cancel flag at every decode step.
"""

import time

from modelhub.options import GenerationOptions, PromptTooLong, Usage


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


def sampling_kwargs(options: GenerationOptions):
    if options.temperature == 0:
        return {"do_sample": False}
    return {
        "do_sample": True,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "top_k": options.top_k or None,
    }


def stream_reply(loaded, messages, options: GenerationOptions, emit, is_cancelled, adapter=None):
    """Generate one reply; call emit(text) for each chunk; return its Usage.

    Runs in the model's worker thread. The streamer sees every decode step and
    checks `is_cancelled()` there, so a stop takes effect within one step (it
    ends `generate` by raising GenerationCancelled). Once adapters are attached
    the model is a peft model, and each request names its adapter (or
    "__base__"): no set_adapter, so nothing about the shared model changes
    between requests.
    """
    import torch

    started = time.monotonic()
    usage = Usage()
    prompt_ids, cut = build_prompt(loaded.tokenizer, messages, loaded.context_length, options.max_new_tokens)
    usage.prompt_tokens = len(prompt_ids)
    usage.truncated_messages = cut

    def on_first_token():
        usage.time_to_first_token = time.monotonic() - started

    if options.seed is not None:
        torch.manual_seed(options.seed)
    extra = {"adapter_names": [adapter or "__base__"]} if loaded.is_peft else {}
    streamer = IncrementalStreamer(loaded.tokenizer, emit, on_first_token, is_cancelled)
    input_ids = torch.tensor([prompt_ids], device=loaded.device)
    try:
        with torch.inference_mode():
            loaded.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=options.max_new_tokens,
                min_new_tokens=options.max_new_tokens if options.ignore_eos else None,
                repetition_penalty=options.repetition_penalty,
                streamer=streamer,
                pad_token_id=loaded.tokenizer.pad_token_id,
                eos_token_id=loaded.tokenizer.eos_token_id,
                **sampling_kwargs(options),
                **extra,
            )
        usage.finish_reason = "stop" if streamer.tokens[-1:] == [loaded.tokenizer.eos_token_id] else "length"
    except GenerationCancelled:
        streamer.end()
        usage.finish_reason = "cancelled"
    usage.completion_tokens = len(streamer.tokens)
    usage.duration = time.monotonic() - started
    return usage


class GenerationCancelled(Exception):
    """Raised from inside `generate` (by the streamer) to stop at the current decode step."""


class IncrementalStreamer:
    """A `generate` streamer that emits text token by token, as soon as it is stable.

    Decoding a token alone can be wrong (a leading space, half of a UTF-8 character),
    so each step decodes a short window of recent tokens and emits what it adds to
    the text already emitted, holding back while the text ends in an incomplete
    character (the incremental detokenization used by TGI and vLLM).
    """

    def __init__(self, tokenizer, emit, on_first_token, is_cancelled):
        self.tokenizer = tokenizer
        self.emit = emit
        self.on_first_token = on_first_token
        self.is_cancelled = is_cancelled
        self.tokens = []
        self.prefix = 0  # window start: tokens before it are settled
        self.read = 0  # tokens up to here have been emitted
        self.prompt_seen = False

    def _decode(self, tokens):
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def put(self, value):
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        if not self.tokens:
            self.on_first_token()
        self.tokens.extend(value.reshape(-1).tolist())
        before = self._decode(self.tokens[self.prefix : self.read])
        after = self._decode(self.tokens[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.emit(after[len(before) :])
            self.prefix, self.read = self.read, len(self.tokens)
        if self.is_cancelled():
            raise GenerationCancelled

    def end(self):
        rest = self._decode(self.tokens[self.prefix :])[len(self._decode(self.tokens[self.prefix : self.read])) :]
        if rest:
            self.emit(rest)


def generate_text(model, tokenizer, messages, max_new_tokens=64):
    """Greedy reply as one string (for samples and quick checks, not for serving)."""
    from modelhub.loading import LoadedModel

    context = getattr(model.config, "max_position_embeddings", 2048)
    loaded = LoadedModel(model, tokenizer, str(model.device), str(model.dtype), context)
    chunks = []
    stream_reply(loaded, messages, GenerationOptions(temperature=0, max_new_tokens=max_new_tokens), chunks.append, lambda: False)
    return "".join(chunks).strip()
