"""One reply generated on its own, in the caller's thread: warm-up, samples, scripts.

There is one decode loop in modelhub, the worker's (engine/worker.py). A reply on its own
is a request on a worker of its own that the caller steps itself (`thread=False`):
the same scheduler decisions, the same model runner (engine/model_runner.py), the same
cancellation and failure handling as a served reply. Prompts are built in
prompts.py (`build_prompt` and `render_prompt` are imported from here too).
"""

from modelhub.backends.loading import LoadedModel
from modelhub.backends.local import TransformersBackend
from modelhub.engine.request import Request
from modelhub.engine.worker import Worker
from modelhub.options import GenerationOptions


def stream_reply(loaded, messages, options: GenerationOptions, emit, is_cancelled, adapter=None):
    """Generate one reply on `loaded`; call emit(text) for each chunk; return its Usage.

    `is_cancelled()` is checked before every step, so a stop takes effect within one
    step. `adapter` names a LoRA adapter already attached to `loaded`, or None for the base.
    Raises ModelhubError if generation fails.
    """
    # No thread and no prefix cache; nothing to close: the backend only borrows `loaded`.
    worker = Worker("a reply on its own", lambda progress: TransformersBackend(loaded), thread=False)
    pair = (adapter, loaded.adapters.get(adapter)) if adapter else None
    request = worker.submit(Request(list(messages), options, adapter=pair))
    while request.usage is None:
        if is_cancelled():
            request.cancel()
        worker.step()
        for text in request.drain():
            emit(text)
    return request.usage


def warm_up(loaded):
    """One tiny generation right after loading: the first real request then starts at full
    speed (the first forward pass of a process pays about a second of one-off set-up)."""
    options = GenerationOptions(temperature=0, max_new_tokens=2)
    stream_reply(loaded, [{"role": "user", "content": "Hi"}], options, lambda text: None, lambda: False)


def generate_text(model, tokenizer, messages, max_new_tokens=64):
    """Greedy reply as one string (for samples and quick checks, not for serving)."""
    context = getattr(model.config, "max_position_embeddings", 2048)
    loaded = LoadedModel(model, tokenizer, str(model.device), str(model.dtype), context)
    chunks = []
    stream_reply(
        loaded, messages, GenerationOptions(temperature=0, max_new_tokens=max_new_tokens), chunks.append, lambda: False
    )
    return "".join(chunks).strip()
