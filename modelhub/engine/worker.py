"""One worker thread per loaded model, and the requests that flow through it.

Every request for a model goes through that model's queue and its single worker
thread: the worker owns the model (and the GPU), loads it before serving the
first request, and is the only thread that touches it. It is a thin loop,
`while ...: step()`: each step it asks its scheduler (scheduler.py) what to do
(admit, drop the stopped, hold for a reply on its way, prefill which prompts,
who leaves) and has the backend do it (backends/local.py; engine/model_runner.py runs the model).
Callers get a `Request` (request.py): they read its text chunks (plain or async iteration),
may cancel it, and read its `usage` at the end. A request cancelled while still
queued (behind a full batch, or while the model loads) ends at once.

Faults stay with the replies they hit and the worker serves on: a request that cannot
be opened (prompt too long, broken adapter) or whose row fails alone ends alone; a failed
forward pass fails every row of its step (the backend frees their caches); a failed load
fails the queued requests and leaves the worker `failed`: the registry loads afresh.
"""

import logging
import queue
import threading
import time
from concurrent.futures import Future

from modelhub.engine.arrivals import arrivals
from modelhub.engine.scheduler import Scheduler
from modelhub.options import ModelhubError, ModelLoadError

log = logging.getLogger(__name__)


class Job:
    """Work on the loaded model that is not a reply (the attention view's forward pass: attention.py).

    It runs in the worker's thread between two steps, so it never races a decode step, and may
    change the model's settings for its own pass. Its caller waits on `future`."""

    def __init__(self, fn):
        self.fn = fn  # fn(backend) -> result
        self.future = Future()

    def run(self, backend):
        try:
            self.future.set_result(self.fn(backend))
        except Exception as exc:
            self.future.set_exception(exc)

    def claim(self):
        return True

    def fail(self, error):
        self.future.set_exception(error)


class Worker:
    """Owns one model: loads it in its own thread, then serves its requests step by step.

    Scheduling is decided by `self.scheduler` (scheduler.py), not here: the worker keeps its thread,
    its queue, loading, error reporting and `step()`, which asks the scheduler and calls the backend
    (backends/local.py). With `thread=False` the caller's thread is the worker's: the backend loads at once,
    the caller calls `step()` itself and keeps the backend (one reply on its own, engine/standalone.py).
    """

    def __init__(self, name, load_backend, on_ready=None, max_batch=16, hold=0.0, thread=True):
        """`load_backend(progress)` builds the backend in this worker's thread, reporting text progress.
        `max_batch` and `hold` (seconds a step may wait for a reply on its way) go to the scheduler."""
        self.name = name
        self.backend = None
        self.state = "loading"
        self.error = ""
        self.progress = ""
        self.load_seconds = None
        self.scheduler = Scheduler(max_batch, hold)
        self.last_used = time.monotonic()
        self.last_used_at = time.time()
        self._created = time.monotonic()
        self._on_ready = on_ready
        self._load_backend = load_backend
        self._queue = queue.Queue()
        self._state_lock = threading.Lock()  # no request slips in after the queue is drained
        self._thread = None
        if thread:
            self._thread = threading.Thread(target=self._run, name=f"modelhub-{name}", daemon=True)
            self._thread.start()
        else:
            self._load()

    def submit(self, request):
        try:
            with self._state_lock:
                if self.state in ("failed", "closed"):
                    raise ModelLoadError(self.error or f"model {self.name!r} is not loaded")
                self.last_used = time.monotonic()
                self._queue.put(request)
        finally:
            arrivals.settle(request.arrival)  # queued first: a worker woken by this finds it
        return request

    def run_job(self, fn):
        """Queue `fn(backend)` to run in this worker's thread, once the model is loaded, between two steps;
        its Future (a failed load fails it)."""
        job = Job(fn)
        with self._state_lock:
            if self.state in ("failed", "closed"):
                raise ModelLoadError(self.error or f"model {self.name!r} is not loaded")
            self._queue.put(job)
        return job.future

    def close(self, timeout=30):
        """Finish the requests in progress, fail the queued ones, free the model."""
        with self._state_lock:
            self.state = "closed"
            self._queue.put(None)
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def idle(self):
        scheduler = self.scheduler
        return self.state == "ready" and not (scheduler.busy or scheduler.queued) and self._queue.empty()

    def describe(self):
        """Runtime status for admins: state, where and how it is loaded, memory, adapters, batch."""
        info = {
            "state": self.state,
            "error": self.error,
            "last_used_at": self.last_used_at,
            "load_seconds": self.load_seconds,
        }
        scheduler = self.scheduler
        info["running"] = len(scheduler.running)
        info["waiting"] = len(scheduler.waiting) + len(scheduler.queued) + self._queue.qsize()
        if self.state == "loading":
            info["loading_for_seconds"] = round(time.monotonic() - self._created, 1)
            info["progress"] = self.progress
        backend = self.backend
        if backend is not None and hasattr(backend, "describe"):
            info.update(backend.describe())
        return info

    def _run(self):
        if self._load():
            self._serve()
        self._unload()

    def _load(self):
        """Build the backend; if that fails, fail the queued requests (the registry loads afresh next time)."""
        try:
            self.backend = self._load_backend(self._report_progress)
            self.load_seconds = round(time.monotonic() - self._created, 2)
            self.state = "ready"
            if self._on_ready:
                self._on_ready(self)
            return True
        except ModelhubError as exc:
            self._fail_all(exc)
        except Exception as exc:  # a broken model folder must not kill the server
            log.exception("loading %s failed", self.name)
            self._fail_all(ModelLoadError(f"loading {self.name!r} failed: {exc}"))
        return False

    def _serve(self):
        try:
            while not self.scheduler.done:
                self.step()
        except Exception as exc:  # a bug in the loop must not leave its requests waiting forever
            log.exception("serving %s failed", self.name)
            self._fail_in_flight(ModelhubError(f"model {self.name!r} failed: {exc}", code="generation_failed"))
            return
        self._drain(ModelhubError(f"model {self.name!r} was unloaded", code="model_unloaded"))

    def _unload(self):
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def _report_progress(self, text):
        self.progress = text

    # --- one step: the scheduler decides, the backend runs -------------------

    def step(self):
        """Admit, drop the stopped, maybe hold for a reply on its way, prefill, decode one token each."""
        self._admit()
        self._drop_cancelled()
        if self._hold():
            return  # a reply came: the next step admits it (and sees whether more are coming)
        self._prefill()
        self._decode()
        self.last_used, self.last_used_at = time.monotonic(), time.time()

    def _admit(self):
        """Hand submitted requests to the scheduler (waiting when there is nothing to do), open those it admits."""
        scheduler = self.scheduler
        block = self._thread is not None and not (scheduler.busy or scheduler.queued)
        while not scheduler.closing:
            try:
                request = self._queue.get(block=block)
            except queue.Empty:
                break
            block = False
            if request is None:
                scheduler.close()
            elif isinstance(request, Job):
                request.run(self.backend)
            else:
                scheduler.add(request)
        for request in scheduler.admit():
            self._open(request)

    def _open(self, request):
        if not request.claim():  # cancelled while queued: already ended
            return
        try:
            sequence = self.backend.open(request)
        except Exception as exc:
            self._report_failure(request, exc)
            return
        sequence.request = request
        self.scheduler.start(sequence)

    def _drop_cancelled(self):
        for sequence in self.scheduler.cancelled():
            sequence.end("cancelled")
            self._end(sequence)

    def _hold(self):
        """Wait for a reply on its way as long as the scheduler allows; True if a request came."""
        deadline = self.scheduler.hold_until(len(arrivals))
        return deadline is not None and arrivals.wait(lambda: not self._queue.empty(), deadline)

    def _prefill(self):
        passes = self.scheduler.prefill(self.backend.prefill_budget)
        if not passes:
            return
        try:
            self.backend.prefill(passes)
        except Exception as exc:  # the backend could not tell whose fault it was
            for group in passes:
                for sequence, _ in group:
                    sequence.error = sequence.error or exc
        self._deliver(self.scheduler.prefilled())

    def _decode(self):
        if not self.scheduler.running:
            return
        try:
            stepped = self.backend.decode()
        except Exception as exc:  # a backend that raises rather than failing the rows: none can go on
            stepped = list(self.scheduler.running)
            for sequence in stepped:
                sequence.error = exc
        self._deliver(stepped)
        self.scheduler.decoded()

    def _deliver(self, sequences):
        """Hand each sequence's new text to its caller; end those the scheduler lets leave."""
        for sequence in sequences:
            self._pass_text(sequence)
        for sequence in self.scheduler.leaving(sequences):
            self._end(sequence)

    def _pass_text(self, sequence):
        if sequence.error is not None:  # a failed sequence's text is not the reply's
            return
        try:
            for part, text in sequence.take_pieces():
                sequence.request.emit(text, part)
        except Exception as exc:
            sequence.error = exc

    def _end(self, sequence):
        """Close a sequence that left the schedule: free its place, then end its request."""
        try:
            self.backend.release(sequence, keep=sequence.error is None)
        except Exception:
            log.exception("releasing a sequence on %s failed", self.name)
        self._pass_text(sequence)  # what the detokenizer held back
        request = sequence.request
        if sequence.error is not None:
            self._report_failure(request, sequence.error)
            return
        usage = sequence.usage
        usage.finish_reason = sequence.finish_reason or "cancelled"
        usage.duration = time.monotonic() - request.started
        request.finish(usage)

    # --- errors --------------------------------------------------------------

    def _report_failure(self, request, exc):
        if not isinstance(exc, ModelhubError):
            log.error("generation failed on %s", self.name, exc_info=exc)
            exc = ModelhubError(f"generation failed: {exc}", code="generation_failed")
        request.fail(exc)

    def _fail_in_flight(self, error):
        """The loop itself broke: fail every request it holds, then the queued ones."""
        for sequence in self.scheduler.clear():
            sequence.request.fail(error)
        self._fail_all(error)

    def _fail_all(self, error):
        with self._state_lock:
            self.state = "failed"
            self.error = error.message
        self._drain(error)

    def _drain(self, error):
        """Fail every request submitted but never opened (a cancelled one was ended by its cancel)."""
        requests = self.scheduler.take_queued()
        while True:
            try:
                requests.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for request in requests:
            if request is not None and request.claim():
                request.fail(error)
