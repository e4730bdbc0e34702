"""The one narrow interface every model backend implements, and its two implementations.

A backend serves many replies at once, step by step: its worker (engine/worker.py) runs
what the scheduler (scheduler.py) decided for each step through these calls:

    backend.open(request) -> sequence      build the prompt; raises ModelhubError for a bad request
    backend.prefill(passes)                feed these prompt tokens: `passes` is [[(sequence, tokens)], ...],
                                           several whole new prompts in one pass, or `tokens` of one prompt;
                                           a prompt all in is `ready` (failures go to `sequence.error`)
    backend.decode() -> [sequence]         one decode step for every running sequence (failures, a failed
                                           forward pass's for every row, go to `sequence.error`)
    backend.release(sequence, keep=True)   it ended: free its place (and keep what a later turn reuses)

A sequence has `ready`, `fed` and `to_feed` (prompt tokens in its cache, and still to
feed), `usage`, `finish_reason`, `error`, `take_pieces()` (its new text as (part, text): the
reasoning of a model that thinks first, then its answer; decoding/parts.py) and `end(reason)`;
`backend.prefill_budget` is how many prompt tokens may be fed between two decode steps.
`request.messages` is a list of {"role", "content"} dicts, `request.options` validated
GenerationOptions and `request.adapter` a (name, folder) LoRA adapter, or None for
the base model. A backend runs only in its worker thread, never on an event loop.
"""

import gc
import re
import time

from modelhub.backends.loading import attach_adapter
from modelhub.decoding.parts import ANSWER
from modelhub.decoding.stopping import StopMatcher
from modelhub.engine.kv_reuse import PrefixCache
from modelhub.options import ModelLoadError, Usage
from modelhub.prompts import messages_as_sent


class TransformersBackend:
    """A Hugging Face causal LM, loaded by modelhub.backends.loading, decoded in step-level batches."""

    def __init__(self, loaded, kv_cache_bytes=0, prefill_chunk=512):
        from modelhub.engine.model_runner import Decoder  # torch: imported once a model is loaded, not at start-up

        self.loaded = loaded
        self.prefix_cache = PrefixCache(kv_cache_bytes) if kv_cache_bytes else None
        self.decoder = Decoder(loaded, self.prefix_cache, prefill_chunk)
        self.prefill_budget = prefill_chunk

    @property
    def context_length(self):
        return self.loaded.context_length

    def open(self, request):
        name = None
        if request.adapter is not None:
            name, folder = request.adapter
            if self.loaded.adapters.get(name) != folder:
                self._attach(name, folder)  # once; later requests only name it
        return self.decoder.open(request.messages, request.options, name, request.started)

    def _attach(self, name, folder):
        if self.prefix_cache is not None:
            self.prefix_cache.forget(name)  # keys computed with a replaced adapter are stale
        attach_adapter(self.loaded, name, folder)

    def prefill(self, passes):
        self.decoder.prefill(passes)

    def attention(self, messages, reply, adapter, max_tokens, max_mb, think=None, tools=None):
        """Attention weights of one pass over a finished reply (attention.py); a Job in the worker's thread."""
        from modelhub.backends.attention import compute  # torch, as above

        name = None
        if adapter is not None:
            name, folder = adapter
            if self.loaded.adapters.get(name) != folder:
                self._attach(name, folder)
        return compute(self.loaded, messages, reply, name, max_tokens, max_mb, think, tools)

    def decode(self):
        return self.decoder.decode()

    def release(self, sequence, keep=True):
        self.decoder.release(sequence, keep)

    def describe(self):
        loaded = self.loaded
        info = {
            "device": loaded.device,
            "dtype": loaded.dtype,
            "quantization": loaded.quantization,
            "memory_bytes": loaded.memory_bytes,
            "context_length": loaded.context_length,
            "adapters": sorted(loaded.adapters),
            "peak_batch": self.decoder.batch.peak,
        }
        if self.prefix_cache is not None:
            info["kv_cache_bytes"] = self.prefix_cache.bytes
            info["kv_cache_entries"] = len(self.prefix_cache)
            info["kv_cache_hits"] = self.prefix_cache.hits
            info["kv_reused_tokens"] = self.prefix_cache.reused_tokens
        return info

    def close(self):
        device = self.loaded.device
        self.loaded = self.decoder = None
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


MAX_SCRIPTED_DELAY = 60.0  # seconds per word: a longer one holds the worker for no purpose


def scripted_delay(source):
    """The delay per word a scripted model's source sets ("echo delay=0.05"), 0 when it sets none.

    Raises ModelLoadError for a bad one; ModelSpec.clean calls it, so the admin refuses it on save.
    """
    delay = 0.0
    for word in source.split():
        if word.startswith("delay="):
            try:
                delay = float(word.removeprefix("delay="))
            except ValueError:
                delay = float("nan")
            if not 0 <= delay <= MAX_SCRIPTED_DELAY:  # also refuses nan and inf
                limit = f"from 0 to {MAX_SCRIPTED_DELAY:g}"
                raise ModelLoadError(f"scripted model source {source!r}: delay must be a number of seconds {limit}")
    return delay


class ScriptedBackend:
    """Replies from a script instead of a model: for tests of the web layer, and demos.

    Each reply is the list of chunks in `chunks` (or, by default, the last user
    message echoed back word by word), one chunk every `delay` seconds. A chunk
    that is an Exception instance is raised at that point, as a failing model would.
    """

    context_length = 4096

    def __init__(self, chunks=None, delay=0.0):
        self.chunks = chunks
        self.delay = delay
        self.calls = []
        self._running = []

    @classmethod
    def from_source(cls, source):
        """A registered scripted model echoes; its source may set a delay per word: "echo delay=0.05"."""
        return cls(delay=scripted_delay(source))

    def open(self, request):
        messages, options = request.messages, request.options
        self.calls.append({"messages": messages, "options": options, "adapter": request.adapter})
        chunks = self.chunks
        if chunks is None:  # echo the last message word by word, whitespace and all
            chunks = re.findall(r"\s*\S+", messages[-1]["content"])
        usage = Usage(
            prompt_tokens=sum(len(m["content"].split()) for m in messages), prompt_text=messages_as_sent(messages)
        )  # no template: it echoes
        sequence = ScriptedSequence(list(chunks), options.max_new_tokens, usage, request.started, options.stop)
        self._running.append(sequence)
        return sequence

    prefill_budget = 16  # a scripted prompt counts as one token

    def prefill(self, passes):
        for group in passes:
            for sequence, _ in group:
                sequence.fed, sequence.ready = 1, True
                if not sequence.chunks:
                    sequence.end("stop")

    def decode(self):
        """One chunk for every running sequence, `delay` seconds per step."""
        if self.delay:
            time.sleep(self.delay)
        running = [s for s in self._running if not s.finish_reason]
        for sequence in running:
            sequence.advance()
        return running

    def release(self, sequence, keep=True):
        self._running.remove(sequence)

    def close(self):
        pass


class ScriptedSequence:
    """One scripted reply: its remaining chunks, handed out one per decode step (cut at a stop string).
    A chunk is the answer's text, or (REASONING, text): what a reasoning model would think first."""

    def __init__(self, chunks, max_new_tokens, usage, started, stop=()):
        self.chunks = chunks
        self.stops = StopMatcher(stop)
        self.limit = max_new_tokens
        self.usage = usage
        self.started = started
        self.pieces = []
        self.finish_reason = ""
        self.error = None
        self.fed = 0  # its prompt counts as one token
        self.ready = False

    @property
    def to_feed(self):
        return 1 - self.fed

    def advance(self):
        chunk = self.chunks[self.usage.completion_tokens]
        if isinstance(chunk, Exception):
            self.error = chunk
            return
        if self.usage.time_to_first_token is None:
            self.usage.time_to_first_token = time.monotonic() - self.started
        self.usage.completion_tokens += 1
        if isinstance(chunk, tuple):  # (REASONING, text)
            self.pieces.append(chunk)
            self.usage.reasoning += chunk[1]
            self.usage.reasoning_tokens += 1
        else:
            self._release(self.stops.add(chunk))
        if self.stops.stopped:
            self.end("stop")
        elif self.usage.completion_tokens >= min(self.limit, len(self.chunks)):
            self.end("stop" if len(self.chunks) <= self.limit else "length")

    def end(self, reason):
        if not self.finish_reason:
            self.finish_reason = reason
            self._release(self.stops.flush())

    def _release(self, text):
        if text:
            self.pieces.append((ANSWER, text))

    def take_pieces(self):
        pieces, self.pieces = self.pieces, []
        return pieces
