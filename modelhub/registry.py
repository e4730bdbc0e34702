"""Registered models (database rows) -> loaded models (workers), behind one lock.

A model is loaded on first use, in its own worker thread, so the caller never
waits on a load and a second request for a model that is still loading queues
behind it instead of loading it twice: a duplicate load of a big model is an
outage, not a slowdown. `unload` frees it explicitly.
"""

import threading

from django.conf import settings

from modelhub.backends import ScriptedBackend, TransformersBackend
from modelhub.engine import Worker


class Registry:
    def __init__(self):
        self._lock = threading.Lock()
        self._workers = {}

    def worker(self, spec):
        """The worker serving this spec, started (and its model loading) if needed."""
        with self._lock:
            worker = self._workers.get(spec.name)
            if worker is None or worker.state in ("failed", "closed"):
                worker = Worker(spec.name, _loader(spec))
                self._workers[spec.name] = worker
            return worker

    def install(self, name, backend):
        """Serve `name` with an already built backend (a scripted one in tests, say)."""
        with self._lock:
            old = self._workers.pop(name, None)
            self._workers[name] = Worker(name, lambda: backend)
        if old is not None:
            old.close()

    def unload(self, name):
        with self._lock:
            worker = self._workers.pop(name, None)
        if worker is not None:
            worker.close()
        return worker is not None

    def unload_all(self):
        for name in list(self._workers):
            self.unload(name)

    def status(self):
        with self._lock:
            return {name: {"state": w.state, "error": w.error} for name, w in self._workers.items()}


def _loader(spec):
    """A zero-argument function that builds the backend; it runs in the worker thread."""
    if spec.backend == spec.Backend.SCRIPTED:
        return ScriptedBackend
    load_settings = spec.load_settings()
    threads = settings.MODELHUB_TORCH_THREADS

    def load():
        from modelhub import loading

        if threads:
            import torch

            torch.set_num_threads(threads)
        return TransformersBackend(loading.load(load_settings))

    return load


registry = Registry()
