"""Who runs in a model's next step: admission, cancellations, holding for arrivals, prefill, who leaves.

Every decision about a model's requests is taken here, and only decided: no torch,
no threads, no waiting. The model's worker (engine/worker.py) asks between two steps and
does what it is told with the backend (which runs the step: engine/model_runner.py for a
Hugging Face model), as nano-vllm's engine asks its scheduler and vLLM's asks
`v1/core/sched`. The scheduler keeps three lines, oldest first:

    queued    requests submitted, not opened yet (behind a full batch, or while the model loads)
    waiting   opened sequences whose prompts are being prefilled
    running   sequences decoding together, one token a step

Each step, in this order:

1. **Admission** (`admit`): queued requests are opened while fewer than `max_batch`
   are in flight. One cancelled while queued was already ended by its cancel: it is
   dropped, never opened.
2. **Cancellations** (`cancelled`): waiting and running sequences whose request was
   cancelled leave now.
3. **Holding** (`hold_until`): while replies are announced but not submitted yet
   (arrivals.py), the step may wait for them, so a newcomer is prefilled at once and
   replies asked for together start together. Running replies wait at most until their
   step is due (`hold` seconds after their last one), admitted prompts at most `hold`
   seconds after they were submitted; a batch with no room waits for nobody.
4. **Prefill** (`prefill`): waiting prompts are fed within a token budget, oldest first,
   so a newcomer gets its first token after at most one step of the running replies,
   and a long prompt, fed in pieces, never stalls them for long. A prompt passed over
   in one step goes first in the next, so none waits more than one step behind a long one.
5. **Leaving** (`prefilled`, `leaving`): prompts all in join the running ones; finished
   sequences leave, and so does a failed one, alone: the others run on.

The objects scheduled are plain, so tests use fakes:

    request    is_cancelled(), started (when it was submitted, on the scheduler's clock)
    sequence   request, fed (prompt tokens in its cache), to_feed (prompt tokens still to feed),
               ready (out of prefill), finish_reason, error
"""

import collections
import time


class Scheduler:
    def __init__(self, max_batch=16, hold=0.0, clock=time.monotonic):
        self.max_batch = max_batch
        self.hold = hold
        self.clock = clock
        self.queued = collections.deque()
        self.waiting = []
        self.running = []
        self.closing = False  # no more admissions; the in-flight ones finish
        self._step_due = 0.0  # when the running replies must step, holding or not
        self._passed_over = set()  # waiting sequences that got no prompt token in the last prefill

    @property
    def busy(self):
        return bool(self.waiting or self.running)

    @property
    def room(self):
        return self.max_batch - len(self.waiting) - len(self.running)

    @property
    def done(self):
        return self.closing and not self.busy

    def add(self, request):
        """A submitted request, queued until it is admitted."""
        self.queued.append(request)

    def close(self):
        """Admit nobody more: the in-flight sequences finish, the queued requests are for `take_queued`."""
        self.closing = True

    def take_queued(self):
        """The queued requests, out of the schedule (to fail them: the model is unloaded or broken)."""
        queued, self.queued = list(self.queued), collections.deque()
        return queued

    def admit(self):
        """Queued requests to open now, oldest first, while there is room; cancelled ones are dropped.

        The room is counted again after each one, so a request that fails to open
        (its sequence never `start`s) leaves its place to the next."""
        while self.queued and not self.closing and self.room > 0:
            request = self.queued.popleft()
            if not request.is_cancelled():  # cancelled while queued: its cancel ended it
                yield request

    def start(self, sequence):
        """An admitted request's sequence: its prompt waits to be prefilled."""
        self.waiting.append(sequence)

    def cancelled(self):
        """In-flight sequences whose request was cancelled, out of the schedule (the worker ends them)."""
        gone = [s for s in (*self.waiting, *self.running) if s.request.is_cancelled()]
        for sequence in gone:
            self.remove(sequence)
        return gone

    def hold_until(self, arriving):
        """The clock time until which this step waits for `arriving` replies (announced, not yet
        submitted), or None: go on now. A submitted one ends the wait; the next step admits it."""
        if not (self.hold and arriving and self.busy) or self.closing or self.room <= 0:
            return None
        dues = [sequence.request.started + self.hold for sequence in self.waiting]
        if self.running:
            dues.append(self._step_due)
        deadline = min(dues)
        return deadline if deadline > self.clock() else None

    def prefill(self, budget):
        """This step's prefill within `budget` prompt tokens: passes, each a list of (sequence, tokens).

        The oldest waiting prompt comes first (one passed over last step before the others).
        Whole new prompts that fit what is left of the budget go through the model together,
        in one pass, when the first in line is among them; otherwise the first in line goes
        alone, as much of it as the budget allows (the rest in the next steps).
        """
        line = sorted(self.waiting, key=lambda s: s not in self._passed_over)  # stable: oldest first
        passes, left = [], budget
        while line and left > 0:
            together, size = [], 0
            for sequence in line:
                if sequence.fed == 0 and size + sequence.to_feed <= left:
                    together.append(sequence)
                    size += sequence.to_feed
            if len(together) > 1 and together[0] is line[0]:
                passes.append([(sequence, sequence.to_feed) for sequence in together])
                line = [s for s in line if s not in together]
                left -= size
            else:
                first = line.pop(0)
                tokens = min(first.to_feed, left)
                passes.append([(first, tokens)])
                left -= tokens
        fed = {sequence for group in passes for sequence, _ in group}
        self._passed_over = {s for s in self.waiting if s not in fed}
        return passes

    def prefilled(self):
        """The sequences out of prefill (ready, or failed), in order; the ready ones join the running ones."""
        out = [s for s in self.waiting if s.ready or s.error is not None]
        for sequence in out:
            self.remove(sequence)
            if sequence.error is None:
                if not self.running:  # the first to run: its first step is due within `hold`
                    self._step_due = self.clock() + self.hold
                self.running.append(sequence)
        return out

    def decoded(self):
        """The running sequences stepped: their next step is due within `hold`."""
        self._step_due = self.clock() + self.hold

    def leaving(self, sequences):
        """Those of `sequences` that end now (finished, or failed: alone), out of the schedule."""
        gone = [s for s in sequences if s.error is not None or s.finish_reason]
        for sequence in gone:
            self.remove(sequence)
        return gone

    def remove(self, sequence):
        for line in (self.waiting, self.running):
            if sequence in line:
                line.remove(sequence)
        self._passed_over.discard(sequence)

    def clear(self):
        """Every in-flight sequence, out of the schedule (the worker's loop broke: it fails them)."""
        gone, self.waiting, self.running = [*self.waiting, *self.running], [], []
        self._passed_over = set()
        return gone
