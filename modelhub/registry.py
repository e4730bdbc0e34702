"""Registered models (database rows) -> loaded models (workers), behind one lock.

A model is loaded on first use (or when a server starts: `api.preload`), in its
own worker thread, so the caller never waits on a load and a second request for a
model that is still loading queues behind it instead of loading it twice: a
duplicate load of a big model is an outage, not a slowdown. Loading one model
never holds the lock that requests for another model need.

Memory is bounded two ways (settings): at most MODELHUB_MAX_LOADED_MODELS models,
and at most MODELHUB_MAX_MEMORY_GB of weights. When a model must load past either
bound, the least recently used idle model is unloaded. A reaper thread unloads
models idle for MODELHUB_IDLE_UNLOAD_SECONDS and models an admin disabled (a
database outage meanwhile is one warning line, not a traceback per cycle).
`unload` frees one explicitly.
"""

import logging
import threading
import time
from collections import Counter

from django.conf import settings
from django.db import Error as DatabaseError
from django.db import close_old_connections

from modelhub.backends import loading
from modelhub.backends.local import ScriptedBackend, TransformersBackend
from modelhub.backends.remote import RemoteWorker
from modelhub.backends.standalone import warm_up
from modelhub.engine.worker import Worker
from modelhub.models import ModelSpec

log = logging.getLogger(__name__)


class Registry:
    def __init__(self):
        self._lock = threading.Lock()
        self._workers = {}
        self.load_counts = Counter()  # name -> how many times its weights were loaded
        self._reaper = None
        self._reaper_stop = threading.Event()
        self._database_down = False  # the reaper's last query failed: warned once, until it answers again

    def worker(self, spec):
        """The worker serving this spec, started (and its model loading) if needed."""
        with self._lock:
            worker = self._workers.get(spec.name)
            if worker is not None and worker.state not in ("failed", "closed") and _still_fits(worker, spec):
                return worker
            evicted = [worker] if worker is not None and worker.state not in ("failed", "closed") else []  # outdated
            if spec.backend == spec.Backend.REMOTE:  # nothing to load, no memory to budget
                worker = RemoteWorker(spec.name, spec.remote_settings(), hold=settings.MODELHUB_ARRIVAL_HOLD_SECONDS)
            else:
                while self._local_count() >= settings.MODELHUB_MAX_LOADED_MODELS and (victim := self._pop_lru_idle()):
                    evicted.append(victim)
                worker = _worker(spec.name, _loader(spec), on_ready=self._after_load)
            self._workers[spec.name] = worker
            self.load_counts[spec.name] += 1
            self._start_reaper()
        if evicted:  # freeing weights (gc, the CUDA cache) takes a while: not on the caller's (an event loop's) time
            threading.Thread(target=_close_all, args=(evicted,), name="modelhub-evict", daemon=True).start()
        return worker

    def install(self, name, backend=None, load=None):
        """Serve `name` with a built backend, or with what `load()` builds (scripted ones in tests)."""
        with self._lock:
            old = self._workers.pop(name, None)
            self._workers[name] = _worker(name, load or (lambda progress: backend))
        if old is not None:
            old.close()

    def unload(self, name):
        with self._lock:
            worker = self._workers.pop(name, None)
        if worker is not None:
            log.info("unloading %s", name)
            worker.close()
        return worker is not None

    def unload_all(self):
        for name in list(self._workers):
            self.unload(name)

    def unload_idle(self, max_idle_seconds):
        """Unload every model that has served nothing for max_idle_seconds; returns their names."""
        now = time.monotonic()
        with self._lock:
            names = [n for n, w in self._workers.items() if w.idle and now - w.last_used >= max_idle_seconds]
            closing = [self._workers.pop(n) for n in names]
        _close_all(closing)
        return names

    def loading(self, name):
        """While this model loads: (seconds so far, its progress text); None when it is not loading."""
        with self._lock:
            worker = self._workers.get(name)
        if worker is None or worker.state != "loading":
            return None
        info = worker.describe()
        return info["loading_for_seconds"], info["progress"]

    def status(self):
        """name -> runtime description (state, device, dtype, quantization, memory, adapters...)."""
        with self._lock:
            workers = dict(self._workers)
        return {name: worker.describe() for name, worker in workers.items()}

    # --- memory budget ---------------------------------------------------------

    def _local_count(self):
        return sum(not isinstance(w, RemoteWorker) for w in self._workers.values())

    def _pop_lru_idle(self, exclude=None):
        """Remove and return the least recently used idle local worker, or None (lock held)."""
        idle = [
            w for name, w in self._workers.items() if name != exclude and w.idle and not isinstance(w, RemoteWorker)
        ]
        if not idle:
            return None
        victim = min(idle, key=lambda w: w.last_used)
        log.info("unloading %s (least recently used) to stay within the memory budget", victim.name)
        return self._workers.pop(victim.name)

    def _after_load(self, worker):
        """Runs in the new worker's thread once its model is loaded: enforce the memory budget."""
        budget = settings.MODELHUB_MAX_MEMORY_GB * 1e9
        evicted = []
        with self._lock:
            while budget and self._memory_bytes() > budget and (victim := self._pop_lru_idle(exclude=worker.name)):
                evicted.append(victim)
        _close_all(evicted)

    def _memory_bytes(self):
        return sum(w.describe().get("memory_bytes", 0) for w in self._workers.values())

    def unload_disabled(self):
        """Unload models an admin disabled (from another process, say); returns their names."""
        names = list(self._workers)
        try:
            disabled = set(ModelSpec.objects.filter(name__in=names, enabled=False).values_list("name", flat=True))
        finally:
            close_old_connections()
        for name in disabled:
            self.unload(name)
        return sorted(disabled)

    def _start_reaper(self):
        if self._reaper is None:
            self._reaper_stop.clear()
            self._reaper = threading.Thread(
                target=self._reap, args=(self._reaper_stop,), name="modelhub-reaper", daemon=True
            )
            self._reaper.start()

    def stop_reaper(self):
        """End the reaper thread (it starts again with the next model served)."""
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            self._reaper_stop.set()
            reaper.join(timeout=5)

    def _reap(self, stop):
        while True:
            idle = settings.MODELHUB_IDLE_UNLOAD_SECONDS
            if stop.wait(max(0.05, min(30.0, idle / 4)) if idle else 30.0):
                return
            self.reap_once()

    def reap_once(self):
        """One cycle of the reaper thread: unload idle models, then disabled ones."""
        idle = settings.MODELHUB_IDLE_UNLOAD_SECONDS
        try:
            if idle:
                for name in self.unload_idle(idle):
                    log.info("unloaded %s after %ss idle", name, idle)
            self._unload_disabled_while_the_database_answers()
        except Exception:  # a bug, not an outage: its traceback, and the reaper goes on
            log.exception("modelhub reaper cycle failed")

    def _unload_disabled_while_the_database_answers(self):
        """`unload_disabled`, which asks the database: an outage is one warning line while it lasts (not a
        traceback every cycle), and one line when the database answers again."""
        try:
            self.unload_disabled()
        except DatabaseError as exc:
            if not self._database_down:
                log.warning(
                    "modelhub reaper: the database does not answer (%s); disabled models are unloaded once it does",
                    _first_line(exc),
                )
            self._database_down = True
            return
        if self._database_down:
            log.info("modelhub reaper: the database answers again")
            self._database_down = False


def _first_line(exc):
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _still_fits(worker, spec):
    """A remote model's worker follows its spec: an admin who changed the URL gets a new one."""
    is_remote = spec.backend == spec.Backend.REMOTE
    if isinstance(worker, RemoteWorker) != is_remote:
        return False
    return not is_remote or worker.settings == spec.remote_settings()


def _worker(name, load, on_ready=None):
    return Worker(
        name,
        load,
        on_ready=on_ready,
        max_batch=settings.MODELHUB_MAX_BATCH,
        hold=settings.MODELHUB_ARRIVAL_HOLD_SECONDS,
    )


def _close_all(workers):
    for worker in workers:
        worker.close()


def _loader(spec):
    """A function of a progress callback that builds the backend; it runs in the worker thread."""
    if spec.backend == spec.Backend.SCRIPTED:
        return lambda progress: ScriptedBackend.from_source(spec.source)
    load_settings = spec.load_settings()
    threads = settings.MODELHUB_TORCH_THREADS

    def load(progress):
        progress("importing torch and transformers")  # the first seconds of a load on a fresh process

        if threads:
            import torch

            torch.set_num_threads(threads)
        backend = TransformersBackend(
            loading.load(load_settings, progress),
            kv_cache_bytes=int(settings.MODELHUB_KV_CACHE_MB * 2**20),
            prefill_chunk=settings.MODELHUB_PREFILL_CHUNK,
        )
        progress("warming up")
        warm_up(backend.loaded)
        return backend

    return load


registry = Registry()
