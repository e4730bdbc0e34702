"""Replies on their way: turns being saved that will start a reply within moments.

A chat turn saves the user's message (it must exist before any reply starts) and
renders it before it submits its request. Meanwhile a busy worker keeps decoding
the replies already running, and on one machine that work shares the cores (and,
for a small model, the interpreter) with the saving, so the newcomer waits on
both before its first token. So a caller announces a reply before it saves
(`expect()`) and the request settles the announcement when it is submitted; until
then workers hold their next decode step, for at most MODELHUB_ARRIVAL_HOLD_SECONDS
per step. The newcomer is saved at full speed and prefilled at once, and replies
asked for together start together, as one padded batch would: the prefill-first
scheduling of vLLM and TGI, moved back to when the turn arrives.

An announcement not settled within MAX_AGE seconds (a turn stuck on a database
lock, say) no longer holds anyone.
"""

import threading
import time

MAX_AGE = 1.0


class Arrival:
    """One announced reply. `done()` settles it (submitted, or given up); calling it again does nothing."""

    def __init__(self, arrivals):
        self._arrivals = arrivals

    def done(self):
        self._arrivals.settle(self)


class Arrivals:
    def __init__(self):
        self._changed = threading.Condition()
        self._since = {}  # unsettled Arrival -> when it was announced (monotonic)

    def expect(self):
        arrival = Arrival(self)
        with self._changed:
            self._since[arrival] = time.monotonic()
        return arrival

    def settle(self, arrival=None):
        """Settle `arrival` and wake holding workers (with None, only wake them: a request came unannounced)."""
        with self._changed:
            self._since.pop(arrival, None)
            self._changed.notify_all()

    def __len__(self):
        """Unsettled announcements younger than MAX_AGE."""
        now = time.monotonic()
        with self._changed:
            return sum(1 for since in self._since.values() if now - since < MAX_AGE)

    def wait(self, arrived, deadline):
        """Block until `arrived()` is true, no reply is on its way, or the monotonic `deadline`.

        Returns `arrived()`. A request is queued before its announcement is settled, so
        a worker woken by the settling finds it in its queue.
        """
        with self._changed:
            while not arrived():
                now = time.monotonic()
                fresh = [since for since in self._since.values() if now - since < MAX_AGE]
                if not fresh or now >= deadline:
                    return False
                self._changed.wait(min(deadline, min(fresh) + MAX_AGE) - now)
            return True


arrivals = Arrivals()
