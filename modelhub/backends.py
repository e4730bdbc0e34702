"""The one narrow interface every model backend implements, and its two implementations.

    backend.generate(messages, options, emit, is_cancelled, adapter=None) -> Usage

`messages` is a list of {"role", "content"} dicts, `emit(text)` receives chunks as
they are produced, `is_cancelled()` is polled between decode steps and `adapter`
is a (name, folder) LoRA adapter to apply, or None for the base model. A backend
runs only in its worker thread (see engine.py), never on an event loop.
"""

import re
import time

from modelhub.options import ModelLoadError, Usage


class TransformersBackend:
    """A Hugging Face causal LM, loaded by modelhub.loading."""

    def __init__(self, loaded):
        self.loaded = loaded

    @property
    def context_length(self):
        return self.loaded.context_length

    def generate(self, messages, options, emit, is_cancelled, adapter=None):
        from modelhub.generation import stream_reply
        from modelhub.loading import attach_adapter

        name = None
        if adapter is not None:
            name, folder = adapter
            if self.loaded.adapters.get(name) != folder:
                attach_adapter(self.loaded, name, folder)  # once; later requests only name it
        return stream_reply(self.loaded, messages, options, emit, is_cancelled, adapter=name)

    def warm_up(self):
        """One tiny generation right after loading: the first real request then starts at full
        speed (the first `generate` of a process pays about a second of one-off set-up)."""
        from modelhub.generation import stream_reply
        from modelhub.options import GenerationOptions

        messages = [{"role": "user", "content": "Hi"}]
        stream_reply(self.loaded, messages, GenerationOptions(temperature=0, max_new_tokens=2), lambda text: None, lambda: False)

    def describe(self):
        loaded = self.loaded
        return {
            "device": loaded.device,
            "dtype": loaded.dtype,
            "quantization": loaded.quantization,
            "memory_bytes": loaded.memory_bytes,
            "context_length": loaded.context_length,
            "adapters": sorted(loaded.adapters),
        }

    def close(self):
        import gc

        device = self.loaded.device
        self.loaded = None
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


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

    @classmethod
    def from_source(cls, source):
        """A registered scripted model echoes; its source may set a delay per word: "echo delay=0.05"."""
        delay = 0.0
        for word in source.split():
            if word.startswith("delay="):
                try:
                    delay = float(word.removeprefix("delay="))
                except ValueError:
                    raise ModelLoadError(f"scripted model source {source!r}: delay must be a number") from None
        return cls(delay=delay)

    def generate(self, messages, options, emit, is_cancelled, adapter=None):
        self.calls.append({"messages": messages, "options": options, "adapter": adapter})
        started = time.monotonic()
        usage = Usage(prompt_tokens=sum(len(m["content"].split()) for m in messages))
        chunks = self.chunks
        if chunks is None:  # echo the last message word by word, whitespace and all
            chunks = re.findall(r"\s*\S+", messages[-1]["content"])
        for chunk in chunks[: options.max_new_tokens]:
            if self.delay:
                time.sleep(self.delay)
            if is_cancelled():
                usage.finish_reason = "cancelled"
                break
            if isinstance(chunk, Exception):
                raise chunk
            if usage.time_to_first_token is None:
                usage.time_to_first_token = time.monotonic() - started
            usage.completion_tokens += 1
            emit(chunk)
        else:
            usage.finish_reason = "stop" if len(chunks) <= options.max_new_tokens else "length"
        usage.duration = time.monotonic() - started
        return usage

    def close(self):
        pass

