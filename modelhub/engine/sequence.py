"""One reply being decoded: its prompt, its own KV cache until it joins the batch, the tokens it
sampled, the text not yet handed to its caller, and how and why it ended.

The model runner (engine/model_runner.py) feeds it and samples for it; `accept` records each token
(with its probability, when the request keeps them: logprobs.py), turns it into text
(decoding/sampler.py's Detokenizer), holds back what could still begin a stop string
(stopping.py) and, for a model with a response template, splits the text into its reasoning and
its answer (decoding/parts.py). `end` settles the text and the usage exactly once.
"""

import time

from transformers import DynamicCache

from modelhub.decoding.logprobs import TokenLogprobs
from modelhub.decoding.parts import ANSWER, REASONING, TOOL_CALLS, openai_calls
from modelhub.decoding.stopping import StopMatcher
from modelhub.options import Usage

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class Sequence:
    """One reply: its prompt, its own cache until it joins the batch, its tokens and new text."""

    def __init__(self, prompt_ids, options, adapter, sampler, detokenizer, started, parts=None):
        self.prompt_ids = prompt_ids
        self.options = options
        self.adapter = adapter or BASE
        self.sampler = sampler
        self.detokenizer = detokenizer
        self.stops = StopMatcher(options.stop)  # between the detokenizer and the caller
        self.started = started
        self.cache = DynamicCache()
        self.fed = 0  # prompt tokens already in the cache
        self.tokens = []  # sampled tokens, the end-of-turn token included
        self.parts = parts  # decoding/parts.Parts, for a model whose replies have parts; None: all answer
        self.pieces = []  # (part, text) produced since the caller last took them
        self.constraint = None  # decoding/grammar.Constraint, for a reply that must follow a grammar
        self.finish_reason = ""
        self.error = None
        self.usage = Usage(prompt_tokens=len(prompt_ids))
        self.logprobs = TokenLogprobs(options.logprobs) if options.logprobs is not None else None

    @property
    def prefilled(self):
        return self.fed == len(self.prompt_ids)

    @property
    def to_feed(self):
        """Prompt tokens not in the cache yet."""
        return len(self.prompt_ids) - self.fed

    @property
    def ready(self):
        """Out of prefill: its first token is sampled (it decodes with the batch, or already ended)."""
        return bool(self.tokens)

    @property
    def cached_ids(self):
        """The tokens whose keys and values are in this sequence's cache (the last sampled one is not fed yet)."""
        return self.prompt_ids[: self.fed] + self.tokens[:-1]

    def accept(self, token, scored=None):
        """Record the sampled token (and `scored`, its log-probability and the top alternatives', when this
        reply keeps them); end the reply on an end-of-turn token, a stop string or at max_new_tokens."""
        if not self.tokens:
            self.usage.time_to_first_token = time.monotonic() - self.started
        self.tokens.append(token)
        if self.constraint is not None and not self.constraint.take(token):
            raise ValueError(f"the grammar refused token {token}: {self.constraint.matcher.get_error()}")
        if token in self.sampler.eos_ids:
            if self.logprobs is not None:
                self.logprobs.add(token, scored, "")
            self.end("stop")
            return
        piece = self.detokenizer.add(token)
        if self.logprobs is not None:
            self.logprobs.add(token, scored, piece)
        self._release(self.stops.add(piece))
        if self.parts is not None and self.parts.reasoning:
            self.usage.reasoning_tokens += 1
        if self.stops.stopped:
            self.end("stop")
        elif len(self.tokens) >= self.options.max_new_tokens:
            self.end("length")

    def end(self, reason):
        if not self.finish_reason:
            held = self.detokenizer.flush()
            self._release(self.stops.add(held) + self.stops.flush())
            if self.parts is not None:
                parsed, rest = self.parts.finish()
                self.pieces += rest
                self.usage.reasoning = parsed.get(REASONING, "")
                self.usage.tool_calls = openai_calls(parsed.get(TOOL_CALLS, []))
                if self.usage.tool_calls and reason == "stop":
                    reason = "tool_calls"
            # What the detokenizer held back may complete a stop string: then that is why it ended.
            self.finish_reason = "stop" if self.stops.stopped and reason == "length" else reason
            if self.logprobs is not None:
                self.logprobs.add_text(held)
                self.usage.token_logprobs = self.logprobs.export(self.detokenizer.tokenizer)
        # Every token sampled counts, those that formed a stop string too (as vLLM counts them).
        self.usage.completion_tokens = len(self.tokens)

    def _release(self, text):
        """Text past the stop strings' hold, as its parts."""
        if text:
            self.pieces += self.parts.feed(text) if self.parts is not None else [(ANSWER, text)]

    def take_pieces(self):
        pieces, self.pieces = self.pieces, []
        return pieces
