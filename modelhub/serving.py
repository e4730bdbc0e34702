"""Replies served in this process: pick a model, start a reply, read it (through the door, modelhub.api).

    from modelhub import api
    spec = api.get_spec("chitchat")
    request = api.start(spec, [{"role": "user", "content": "Hello"}], {"temperature": 0})
    for text in request: print(text, end="")
    request.usage  # prompt/completion tokens, time to first token, duration, finish reason

Called from async code, iterate `request.chunks()` instead. A caller that saves something
first (a chat turn) reserves the reply before saving, so running replies make room for it:
`reservation = api.reserve()`, then `reservation.start(...)` or `reservation.release()`.
With `adapter=api.get_adapter(spec, "name")` the reply comes from that LoRA adapter on
the shared base model.
Nothing here imports torch; the model loads in its worker thread on first use, or when a
server starts (`preload`: the default model and those marked `load_at_start`). A server's
probes and metrics read `runtime()`, `gpu_memory()` and `check_default()`: none loads anything.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import sys
import threading

from django.conf import settings

from modelhub.backends.remote import check_server
from modelhub.decoding import grammar
from modelhub.engine.arrivals import arrivals
from modelhub.engine.request import Request
from modelhub.models import Adapter, ModelSpec, ModelWorker, pick_default
from modelhub.options import InvalidOptions, ModelhubError, ModelLoadError, ModelNotFound
from modelhub.registry import registry

log = logging.getLogger(__name__)


def get_spec(name=None):
    """The enabled model with this name, or the default model when name is empty."""
    specs = ModelSpec.objects.enabled()
    spec = specs.filter(name=name).first() if name else specs.default()
    if spec is None:
        raise ModelNotFound(f"no enabled model named {name!r}" if name else "no model is registered")
    return spec


def options_for(spec, overrides=None):
    """The spec's defaults with the caller's overrides, validated. Whether token probabilities are kept
    is the model's switch (`ModelSpec.token_probabilities`), whatever the overrides say."""
    defaults = spec.default_options()
    options = defaults.merged(overrides or {}).validated(settings.MODELHUB_MAX_NEW_TOKENS_LIMIT)
    if found := grammar.problems(options.tools, options.tool_choice, options.response_format):
        raise InvalidOptions("; ".join(f"{name}: {problem}" for name, problem in found.items()))
    return dataclasses.replace(options, logprobs=defaults.logprobs)


def structure_problems(tools, tool_choice="auto", response_format=None):
    """{field: what is wrong} with a request's tools, tool choice and response format (their grammar
    compiled): decoding/grammar.py."""
    return grammar.problems(tools, tool_choice, response_format)


def preload():
    """Start loading the default model and the enabled models marked `load_at_start`; their names.

    For a server (or a model worker) that starts: its first reply then need not wait for
    the load. Each model loads in its worker's thread (this returns at once, and never
    imports torch); one loaded or loading already is not loaded again. At most
    MODELHUB_MAX_LOADED_MODELS local models are asked for (the default first): loading
    more would only unload them again. Nothing when MODELHUB_PRELOAD is off. Reads the
    database: a database that is away or not migrated raises its DatabaseError.
    """
    if not settings.MODELHUB_PRELOAD:
        return []
    specs = list(ModelSpec.objects.enabled())
    default = pick_default(specs)
    wanted = [default] if default is not None else []
    wanted += [spec for spec in specs if spec.load_at_start and spec != default]
    names, local = [], 0
    for spec in wanted:
        if spec.backend != spec.Backend.REMOTE:
            if local == settings.MODELHUB_MAX_LOADED_MODELS:
                log.warning(
                    "not loading %s at start: MODELHUB_MAX_LOADED_MODELS=%d models are already loading",
                    spec.name,
                    local,
                )
                continue
            local += 1
        registry.worker(spec)
        names.append(spec.name)
    return names


def load(spec):
    """Start loading this model, if it is not loaded (returns at once: it loads in its worker's thread)."""
    registry.worker(spec)


def loading(spec):
    """While the spec's model loads: (seconds so far, its progress text, e.g. "loading weights"); else None."""
    return registry.loading(spec.name)


def runtime():
    """name -> runtime status of each model this process serves, as the admin's runtime column shows it:
    state, running and waiting replies, peak_batch (the largest batch so far), memory_bytes and, for a
    local model, its prefix cache (kv_reuse.py: kv_cache_bytes, kv_cache_entries, kv_cache_hits,
    kv_reused_tokens). Reads no database; never waits on a model."""
    return registry.status()


def gpu_memory():
    """{"cuda:N": (allocated, reserved, total bytes)} of this process's CUDA devices; empty unless a model
    already put torch on a GPU here: never imports torch, never starts CUDA (a scrape must cost nothing)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {}
    cuda = torch.cuda
    return {
        f"cuda:{i}": (cuda.memory_allocated(i), cuda.memory_reserved(i), cuda.get_device_properties(i).total_memory)
        for i in range(cuda.device_count())
    }


def check_default(timeout=2.0):
    """Can the default model serve? A sentence saying why; ModelhubError if not. Never loads weights.

    Loaded or loading here: yes. With model workers on: a live worker serves it. Otherwise what a load
    would need is at hand: a scripted model; a local folder with its config.json (the built-in model's
    too); a Hub id in the local cache (or, online, fetched on first use); a remote server that answers
    `GET /models` with it within `timeout` seconds. Reads the database.
    """
    spec = get_spec()
    state = registry.status().get(spec.name, {}).get("state")
    if state in ("ready", "loading"):
        return f"{spec.name} is {'loaded' if state == 'ready' else 'loading'}"
    if settings.MODELHUB_WORKERS:
        if not ModelWorker.objects.serving(spec.name):
            raise ModelhubError(f"no live model worker serves {spec.name}", code="no_model_worker")
        return f"{spec.name} is served by a model worker"
    if spec.backend == spec.Backend.SCRIPTED:
        return f"{spec.name} is scripted"
    if spec.backend == spec.Backend.REMOTE:
        remote = spec.remote_settings()
        return check_server(
            dataclasses.replace(
                remote,
                connect_timeout=min(remote.connect_timeout, timeout),
                read_timeout=min(remote.read_timeout, timeout),
            )
        )
    return _weights_at_hand(spec)


def _weights_at_hand(spec):
    folder = spec.local_path
    if folder is None and not spec.source.startswith(("/", ".", "~")):  # a Hub repo id, as the loader reads it
        from huggingface_hub import constants, try_to_load_from_cache

        if isinstance(try_to_load_from_cache(spec.source, "config.json", revision=spec.revision or None), str):
            return f"{spec.name}: {spec.source} is in the Hugging Face cache"
        if constants.HF_HUB_OFFLINE:
            raise ModelLoadError(f"{spec.source} is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
        return f"{spec.name}: {spec.source} downloads from the Hub on first use"
    if folder is None or not (folder / "config.json").is_file():
        raise ModelLoadError(f"{spec.source} is not a model folder (no config.json)")
    return f"{spec.name}: {folder} has its config.json"


ATTENTION_WAIT_SECONDS = 300  # a model loaded for the attention view may take minutes
_recent_attention = collections.OrderedDict()  # the last few passes: a page shows several views of one
_recent_attention_lock = threading.Lock()


def attention(spec, messages, reply, adapter=None, prompt_options=None):
    """Attention weights (modelhub.backends.attention.Attention) of one forward pass over `messages`' prompt and
    `reply` (its token ids, its text, or an assistant turn the template writes, its reasoning with it) on this
    spec's model, with an Adapter of it or none. `prompt_options`: the reply's `think` and `tools`, which
    change the prompt as they did when it was written.

    The model is loaded here if it is not (and waited for): a web process with model workers asks
    one instead (workers.ask_attention). A ModelhubError says why not: a model chatsite does not
    run, a sequence over the limits."""
    if spec.backend != spec.Backend.TRANSFORMERS:
        raise ModelhubError(
            f"{spec} runs outside chatsite ({spec.get_backend_display()}), so its attention weights cannot be read.",
            code="no_attention",
        )
    prompt_options = {name: value for name, value in (prompt_options or {}).items() if value not in (None, [], ())}
    key = (spec.name, spec.updated_at, adapter.pk if adapter else None, repr(messages), repr(reply))
    key += (repr(sorted(prompt_options.items())),)
    with _recent_attention_lock:
        if key in _recent_attention:
            _recent_attention.move_to_end(key)
            return _recent_attention[key]
    pair = (adapter.name, str(adapter.local_path)) if adapter is not None else None
    limits = (settings.MODELHUB_ATTENTION_MAX_TOKENS, settings.MODELHUB_ATTENTION_MAX_MB)
    job = registry.worker(spec).run_job(
        lambda backend: backend.attention(messages, reply, pair, *limits, **prompt_options)
    )
    try:
        result = job.result(timeout=ATTENTION_WAIT_SECONDS)
    except concurrent.futures.TimeoutError:
        raise ModelhubError(
            f"{spec} did not finish loading within {ATTENTION_WAIT_SECONDS} s; try again in a while.",
            code="attention_timeout",
        ) from None
    with _recent_attention_lock:
        _recent_attention[key] = result
        while len(_recent_attention) > 2:
            _recent_attention.popitem(last=False)
    return result


def get_adapter(spec, name):
    """The enabled adapter of this base model with this name."""
    adapter = Adapter.objects.enabled().filter(base=spec, name=name).first()
    if adapter is None:
        raise ModelNotFound(f"model {spec.name!r} has no enabled adapter named {name!r}")
    return adapter


class Reservation:
    """A reply about to start: made before the caller saves what the reply answers.

    Running replies hold their next step for it (briefly, see modelhub.engine.arrivals), so it
    starts at once and replies asked for together start together. `start()` it once, or
    `release()` it if the reply will not come (the turn was refused); either settles it,
    and settling twice does nothing.
    """

    def __init__(self):
        self._arrival = arrivals.expect()

    def start(self, spec, messages, overrides=None, adapter=None):
        """Queue the reply on the spec's worker (with an Adapter of that spec, or none); its Request.

        Called on an event loop, the Request is read with `async for text in request.chunks()`;
        anywhere else, with `for text in request`."""
        try:
            if adapter is not None and adapter.base_id != spec.pk:
                raise ModelNotFound(f"adapter {adapter.name!r} belongs to {adapter.base.name!r}, not {spec.name!r}")
            pair = (adapter.name, str(adapter.local_path)) if adapter is not None else None
            request = Request(
                list(messages), options_for(spec, overrides), loop=_running_loop(), adapter=pair, arrival=self._arrival
            )
            return registry.worker(spec).submit(request)
        finally:
            self.release()

    def release(self):
        self._arrival.done()


def reserve():
    """Announce a reply before saving what it answers; see Reservation."""
    return Reservation()


def start(spec, messages, overrides=None, adapter=None):
    """Queue a reply at once (no turn to save first): `reserve().start(...)`."""
    return reserve().start(spec, messages, overrides, adapter=adapter)


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a thread or a command: the request is read by plain iteration
        return None
