"""A request: one reply being generated, as its caller sees it.

The caller (a reply task on an event loop, a script, a test) reads its text chunks by
plain or async iteration, may cancel it, and reads its `usage` at the end; the model's
worker (engine/worker.py, or a remote stream: remote.py) is the producer, from its own thread.
"""

import asyncio
import collections
import queue
import threading
import time

from modelhub.decoding.parts import ANSWER
from modelhub.options import Usage

_CHUNK, _END, _ERROR = "chunk", "end", "error"  # a chunk's value: (part, text), parts as in decoding/parts.py


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
        self._on_cancel = None  # a remote request closes its stream (remote.py)
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
        if self._on_cancel is not None:
            self._on_cancel()
        if self._take():  # no worker has it: nobody else will ever end it
            self.finish(Usage(finish_reason="cancelled", duration=time.monotonic() - self.started))

    def on_cancel(self, callback):
        """Have `cancel()` call `callback` (in the cancelling thread); at once if it was already cancelled."""
        self._on_cancel = callback
        if self._cancel.is_set():
            callback()

    def _take(self):
        """True for the one caller (worker or cancel) that takes this request; it alone ends it."""
        with self._take_lock:
            taken, self._taken = self._taken, True
        return not taken

    def is_cancelled(self):
        return self._cancel.is_set()

    def __iter__(self):
        """The answer's text chunks, blocking; raises ModelhubError if generation failed. (A model's reasoning,
        if it wrote some, is `usage.reasoning` at the end; `pieces()` streams it.)"""
        while True:
            item = self._items.get()
            piece = self._consume(item)
            if piece is None:
                return
            if piece[0] == ANSWER:
                yield piece[1]

    async def chunks(self, min_interval=0.0):
        """The answer's text as it arrives, without blocking the event loop (see `pieces`)."""
        async for part, text in self.pieces(min_interval):
            if part == ANSWER:
                yield text

    async def pieces(self, min_interval=0.0):
        """(part, text) as it arrives, without blocking the event loop: the reasoning of a model that thinks
        first, then its answer (decoding/parts.py: REASONING, ANSWER).

        Pieces that arrived together are joined, part by part, so a slow consumer sends fewer,
        larger frames instead of falling behind; with `min_interval` (seconds) at
        most one batch is yielded per interval (for a remote channel layer).
        """
        while True:
            while not self._items:
                self._ready.clear()
                self._wake_pending = False  # from here on, the next item wakes us
                if self._items:  # it came in meanwhile
                    break
                await self._ready.wait()
            items = [self._items.popleft() for _ in range(len(self._items))]
            for piece in _joined([value for kind, value in items if kind == _CHUNK]):
                yield piece
            if items[-1][0] != _CHUNK:  # the end or an error comes last: nothing follows
                self._consume(items[-1])
                return
            if min_interval:
                # Look again after the interval without being woken: tokens gather meanwhile and
                # the worker does not pay for a wake-up per read (only an idle reader is woken).
                self._wake_pending = True
                await asyncio.sleep(min_interval)

    def drain(self):
        """The answer's chunks produced so far, without waiting: for a caller that steps the worker itself
        (backends/standalone.py). Sets `usage` once the reply ended; raises ModelhubError if it failed."""
        while not self._items.empty():
            piece = self._consume(self._items.get_nowait())
            if piece is None:
                return
            if piece[0] == ANSWER:
                yield piece[1]

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

    def emit(self, text, part=ANSWER):
        self._put((_CHUNK, (part, text)))

    def finish(self, usage):
        self._put((_END, usage))

    def fail(self, error):
        self._put((_ERROR, error))


def _joined(pieces):
    """Consecutive pieces of one part as one."""
    joined = []
    for part, text in pieces:
        if joined and joined[-1][0] == part:
            joined[-1] = (part, joined[-1][1] + text)
        else:
            joined.append((part, text))
    return joined
