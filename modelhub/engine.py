"""One worker thread per loaded model, and the requests that flow through it.

Every request for a model goes through that model's queue and its single worker
thread: the worker owns the model (and the GPU), loads it before serving the
first request, and is the only thread that touches it. It schedules step by
step: between two decode steps it admits new requests, drops stopped ones, feeds
waiting prompts up to a token budget, oldest first (so a newcomer gets its first
token after at most one step of the others, and a long prompt never stalls them
for long), waits briefly while a reply is on its way (arrivals.py), then runs one
decode step for all running requests together (batching.py).
Callers get a `Request`: they read its text chunks (plain or async iteration),
may cancel it, and read its `usage` at the end. A request cancelled while still
queued (behind a full batch, or while the model loads) ends at once.

Faults stay with the replies they hit and the worker serves on: a request that cannot
be opened (prompt too long, broken adapter) or whose row fails alone ends alone; a failed
forward pass fails every row of its step (the backend frees their caches); a failed load
fails the queued requests and leaves the worker `failed`: the registry loads afresh.
"""

import asyncio
import collections
import logging
import queue
import threading
import time

from modelhub.arrivals import arrivals
from modelhub.options import ModelhubError, ModelLoadError, Usage

log = logging.getLogger(__name__)

_CHUNK, _END, _ERROR = "chunk", "end", "error"


class Request:
    """A single reply being generated. Thread-safe producer side, one consumer."""

    def __init__(self, messages, options, loop=None, adapter=None, arrival=None):
        self.messages = messages
        self.options = options
        self.adapter = adapter  # (name, folder) of a LoRA adapter on this model, or None for the base
        self.arrival = arrival  # the announcement (arrivals.py) that submitting this request settles
        self.started = time.monotonic()  # usage times count from here, time in the queue included
        self.usage = None
        self.error = None
        self._cancel = threading.Event()
        self._taken = False  # by the worker (to serve or fail it) or by cancel() (to end it unserved)
        self._take_lock = threading.Lock()
        self._loop = loop
        if loop is None:
            self._items = queue.Queue()
        else:
            # Items wait in a deque; the event loop is woken only when the reader waits for
            # them: not per token, and not while the reader paces itself (see chunks()).
            self._items = collections.deque()
            self._ready = asyncio.Event()
            self._wake_pending = False

    # --- caller side ---------------------------------------------------------

    def cancel(self):
        """Stop this reply: one still queued ends here and now, one being written at its next step."""
        self._cancel.set()
        if self._take():  # no worker has it: nobody else will ever end it
            self.finish(Usage(finish_reason="cancelled", duration=time.monotonic() - self.started))

    def _take(self):
        """True for the one caller (worker or cancel) that takes this request; it alone ends it."""
        with self._take_lock:
            taken, self._taken = self._taken, True
        return not taken

    def is_cancelled(self):
        return self._cancel.is_set()

    def __iter__(self):
        """Text chunks, blocking; raises ModelhubError if generation failed."""
        while True:
            item = self._items.get()
            text = self._consume(item)
            if text is None:
                return
            yield text

    async def chunks(self, min_interval=0.0):
        """Text as it arrives, without blocking the event loop.

        Chunks that arrived together are joined, so a slow consumer sends fewer,
        larger frames instead of falling behind; with `min_interval` (seconds) at
        most one piece is yielded per interval (for a remote channel layer).
        """
        while True:
            while not self._items:
                self._ready.clear()
                self._wake_pending = False  # from here on, the next item wakes us
                if self._items:  # it came in meanwhile
                    break
                await self._ready.wait()
            items = [self._items.popleft() for _ in range(len(self._items))]
            text = [value for kind, value in items if kind == _CHUNK]
            if text:
                yield "".join(text)
            if items[-1][0] != _CHUNK:  # the end or an error comes last: nothing follows
                self._consume(items[-1])
                return
            if min_interval:
                # Look again after the interval without being woken: tokens gather meanwhile and
                # the worker does not pay for a wake-up per read (only an idle reader is woken).
                self._wake_pending = True
                await asyncio.sleep(min_interval)

    def _consume(self, item):
        kind, value = item
        if kind == _CHUNK:
            return value
        if kind == _END:
            self.usage = value
            return None
        self.error = value
        raise value

    # --- worker side ---------------------------------------------------------

    def claim(self):
        """The worker takes the request to serve it; False if a cancel already ended it."""
        return self._take()

    def _put(self, item):
        if self._loop is None:
            self._items.put(item)
            return
        self._items.append(item)
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the caller's event loop is gone: nobody reads this any more
            self._cancel.set()

    def emit(self, text):
        self._put((_CHUNK, text))

    def finish(self, usage):
        self._put((_END, usage))

    def fail(self, error):
        self._put((_ERROR, error))


class Worker:
    """Owns one model: loads it in its own thread, then serves its requests step by step.

    A backend offers the step interface (backends.py): `open(request) -> sequence`,
    `prefill(sequences, budget) -> tokens fed`, `decode() -> sequences stepped`, `release(sequence, keep)`,
    and `prefill_budget`; prefill and decode record a row's failure on its sequence (`error`). A sequence
    exposes `ready`, `take_text()`, `finish_reason`, `error`, `usage` and `end(reason)`.
    """

    def __init__(self, name, load_backend, on_ready=None, max_batch=16, hold=0.0):
        """`load_backend(progress)` builds the backend in this worker's thread, reporting text progress.
        While replies are on their way (arrivals.py), running replies wait at most `hold` seconds per
        step, and admitted prompts at most `hold` seconds, for them."""
        self.name = name
        self.backend = None
        self.state = "loading"
        self.error = ""
        self.progress = ""
        self.load_seconds = None
        self.max_batch = max_batch
        self.hold = hold
        self._step_due = 0.0  # monotonic time by which the running replies must step, holding or not
        self.last_used = time.monotonic()
        self.last_used_at = time.time()
        self._created = time.monotonic()
        self._on_ready = on_ready
        self._load_backend = load_backend
        self._queue = queue.Queue()
        self._waiting = collections.deque()  # opened, prompt not fully prefilled yet (oldest first)
        self._running = []  # decoding together
        self._closing = False
        self._state_lock = threading.Lock()  # no request slips in after the queue is drained
        self._thread = threading.Thread(target=self._run, name=f"modelhub-{name}", daemon=True)
        self._thread.start()

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

    def close(self, timeout=30):
        """Finish the requests in progress, fail the queued ones, free the model."""
        with self._state_lock:
            self.state = "closed"
            self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def busy(self):
        return bool(self._waiting or self._running)

    @property
    def idle(self):
        return self.state == "ready" and not self.busy and self._queue.empty()

    def describe(self):
        """Runtime status for admins: state, where and how it is loaded, memory, adapters, batch."""
        info = {"state": self.state, "error": self.error, "last_used_at": self.last_used_at}
        info["load_seconds"] = self.load_seconds
        info["running"], info["waiting"] = len(self._running), len(self._waiting) + self._queue.qsize()
        if self.state == "loading":
            info["loading_for_seconds"] = round(time.monotonic() - self._created, 1)
            info["progress"] = self.progress
        backend = self.backend
        if backend is not None and hasattr(backend, "describe"):
            info.update(backend.describe())
        return info

    def _run(self):
        if self._load():
            try:
                self._serve()
            except Exception as exc:  # a bug in the loop must not leave its requests waiting forever
                log.exception("serving %s failed", self.name)
                self._fail_in_flight(ModelhubError(f"model {self.name!r} failed: {exc}", code="generation_failed"))
        if self.backend is not None:
            self.backend.close()
            self.backend = None

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
        while not (self._closing and not self.busy):
            self._admit(block=not self.busy)
            self._drop_cancelled()
            if self._hold():
                continue  # a reply came: admit it, then see whether more are coming
            self._prefill()
            self._decode_step()
            self.last_used, self.last_used_at = time.monotonic(), time.time()
        self._drain(ModelhubError(f"model {self.name!r} was unloaded", code="model_unloaded"))

    def _report_progress(self, text):
        self.progress = text

    # --- scheduling ----------------------------------------------------------

    def _admit(self, block):
        """Open queued requests while there is room; wait for one when there is nothing else to do."""
        while not self._closing and len(self._waiting) + len(self._running) < self.max_batch:
            try:
                request = self._queue.get(block=block)
            except queue.Empty:
                return
            block = False
            if request is None:
                self._closing = True
                return
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
        self._waiting.append(sequence)

    def _drop_cancelled(self):
        for sequence in [s for s in (*self._waiting, *self._running) if s.request.is_cancelled()]:
            sequence.end("cancelled")
            self._retire(sequence)

    def _prefill(self):
        """Feed waiting prompts, oldest first, up to this round's token budget; the ready ones join."""
        if not self._waiting:
            return
        waiting = list(self._waiting)
        try:
            self.backend.prefill(waiting, self.backend.prefill_budget)
        except Exception as exc:  # the backend could not tell whose fault it was
            for sequence in waiting:
                sequence.error = sequence.error or exc
        for sequence in waiting:
            if sequence.error is not None:
                self._retire(sequence, sequence.error)
            elif sequence.ready:
                self._waiting.remove(sequence)
                if not self._running:
                    self._step_due = time.monotonic() + self.hold
                self._running.append(sequence)
                self._deliver(sequence)

    def _hold(self):
        """While a reply is on its way, wait for it rather than compute; True if a request came.

        Running replies wait at most until their step is due, and admitted prompts at most
        `hold` seconds, so prompts sent together are prefilled together."""
        if not self.hold or self._closing or not self.busy:
            return False
        if len(self._waiting) + len(self._running) >= self.max_batch:  # no room: what comes waits anyway
            return False
        dues = [sequence.request.started + self.hold for sequence in self._waiting]
        if self._running:
            dues.append(self._step_due)
        return arrivals.wait(lambda: not self._queue.empty(), min(dues))

    def _decode_step(self):
        if not self._running:
            return
        try:
            stepped = self.backend.decode()
        except Exception as exc:  # a backend that raises rather than failing the rows: none can go on
            for sequence in list(self._running):
                self._retire(sequence, exc)
            return
        for sequence in stepped:
            self._deliver(sequence)
        self._step_due = time.monotonic() + self.hold

    def _deliver(self, sequence):
        """Hand the sequence's new text to its caller; retire it if it ended or failed."""
        try:
            text = sequence.take_text()
            if text:
                sequence.request.emit(text)
        except Exception as exc:  # noqa: BLE001 - a caller's failure is that request's alone
            sequence.error = exc
        if sequence.error is not None or sequence.finish_reason:
            self._retire(sequence, sequence.error)

    def _retire(self, sequence, error=None):
        """Take an ended sequence out of the schedule and close its request."""
        for group in (self._waiting, self._running):
            if sequence in group:
                group.remove(sequence)
        request = sequence.request
        try:
            self.backend.release(sequence, keep=error is None)
        except Exception:  # noqa: BLE001 - releasing must never take the worker down
            log.exception("releasing a sequence on %s failed", self.name)
        if error is not None:
            self._report_failure(request, error)
            return
        text = sequence.take_text()
        if text:
            request.emit(text)
        usage = sequence.usage
        usage.finish_reason = sequence.finish_reason or "cancelled"
        usage.duration = time.monotonic() - request.started
        request.finish(usage)

    def _report_failure(self, request, exc):
        if not isinstance(exc, ModelhubError):
            log.error("generation failed on %s", self.name, exc_info=exc)
            exc = ModelhubError(f"generation failed: {exc}", code="generation_failed")
        request.fail(exc)

    def _fail_in_flight(self, error):
        """The loop itself broke: fail every request it holds, then the queued ones."""
        for sequence in (*self._waiting, *self._running):
            sequence.request.fail(error)
        self._waiting, self._running = collections.deque(), []
        self._fail_all(error)

    def _fail_all(self, error):
        with self._state_lock:
            self.state = "failed"
            self.error = error.message
        self._drain(error)

    def _drain(self, error):
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not None and request.claim():
                request.fail(error)
