"""The scheduler alone: plain requests and sequences, a clock the test moves. No model,
no threads, no sleeps: each test plays the worker's part (open, feed, decode) by hand."""

import pytest

from modelhub.engine.scheduler import Scheduler

HOLD = 0.1


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeRequest:
    def __init__(self, started=100.0):
        self.started = started
        self.cancelled = False

    def is_cancelled(self):
        return self.cancelled


class FakeSequence:
    """A prompt of `prompt` tokens, `cached` of them already in its cache (a stored prefix)."""

    def __init__(self, request, prompt=10, cached=0):
        self.request = request
        self.prompt, self.fed = prompt, cached
        self.ready = False
        self.finish_reason = ""
        self.error = None

    @property
    def to_feed(self):
        return self.prompt - self.fed

    def feed(self, tokens):
        self.fed += tokens
        self.ready = self.fed == self.prompt


@pytest.fixture
def clock():
    return Clock()


def scheduler(clock, max_batch=4, hold=0.0):
    return Scheduler(max_batch=max_batch, hold=hold, clock=clock)


def open_admitted(sched, prompts=(), cached=0):
    """Open every request the scheduler admits (as the worker does); their sequences."""
    sizes, opened = iter(prompts), []
    for request in sched.admit():
        sequence = FakeSequence(request, next(sizes, 10), cached)
        sched.start(sequence)
        opened.append(sequence)
    return opened


def submit(sched, clock, *prompts, cached=0):
    """Queue a request per prompt length, submitted now, and open those admitted."""
    for _ in prompts:
        sched.add(FakeRequest(started=clock.now))
    return open_admitted(sched, prompts, cached)


def finished(sequence):
    sequence.finish_reason = "stop"
    return sequence


def run_prefill(sched, budget):
    """Plan this step's prefill and carry it out; the passes, as lists of (sequence, tokens)."""
    passes = sched.prefill(budget)
    for group in passes:
        for sequence, tokens in group:
            sequence.feed(tokens)
    sched.prefilled()
    return passes


# --- admission ------------------------------------------------------------------------


def test_it_admits_queued_requests_up_to_max_batch_oldest_first(clock):
    sched = scheduler(clock, max_batch=3)
    requests = [FakeRequest() for _ in range(5)]
    for request in requests:
        sched.add(request)

    opened = open_admitted(sched)

    assert [s.request for s in opened] == requests[:3] and list(sched.queued) == requests[3:]
    assert open_admitted(sched) == []  # no room until one leaves
    sched.leaving([finished(opened[1])])
    assert [s.request for s in open_admitted(sched)] == [requests[3]]


def test_a_request_that_fails_to_open_leaves_its_place_to_the_next(clock):
    sched = scheduler(clock, max_batch=1)
    broken, next_one = FakeRequest(), FakeRequest()
    sched.add(broken)
    sched.add(next_one)

    admitted = []
    for request in sched.admit():
        admitted.append(request)
        if request is next_one:  # the first never becomes a sequence
            sched.start(FakeSequence(request))

    assert admitted == [broken, next_one] and sched.room == 0


def test_a_closing_scheduler_admits_nobody_and_hands_back_the_queued(clock):
    sched = scheduler(clock)
    running = submit(sched, clock, 10)
    queued = FakeRequest()
    sched.close()
    sched.add(queued)

    assert list(sched.admit()) == [] and not sched.done  # the running one finishes first
    assert sched.take_queued() == [queued]
    sched.leaving([finished(running[0])])
    assert sched.done


# --- cancellation ---------------------------------------------------------------------


def test_a_request_cancelled_while_queued_is_dropped_without_being_opened(clock):
    sched = scheduler(clock, max_batch=1)
    (running,) = submit(sched, clock, 10)
    queued, after = FakeRequest(), FakeRequest()
    sched.add(queued)
    sched.add(after)

    queued.cancelled = True
    sched.leaving([finished(running)])

    assert list(sched.admit()) == [after] and not sched.queued


def test_cancelled_waiting_and_running_sequences_leave_and_the_others_stay(clock):
    sched = scheduler(clock)
    first, second = submit(sched, clock, 5, 5)
    run_prefill(sched, budget=100)
    (waiting,) = submit(sched, clock, 5)

    first.request.cancelled = True
    waiting.request.cancelled = True

    assert sched.cancelled() == [waiting, first]
    assert sched.running == [second] and sched.waiting == [] and sched.room == 3
    assert sched.cancelled() == []


# --- prefill --------------------------------------------------------------------------


def test_new_prompts_that_fit_the_budget_are_prefilled_together_in_one_pass(clock):
    sched = scheduler(clock, max_batch=8)
    prompts = submit(sched, clock, 30, 20, 40)

    passes = run_prefill(sched, budget=100)

    assert passes == [[(prompts[0], 30), (prompts[1], 20), (prompts[2], 40)]]
    assert sched.running == prompts and sched.waiting == []


def test_prompts_are_prefilled_oldest_first_within_the_budget(clock):
    sched = scheduler(clock, max_batch=8)
    old, young = submit(sched, clock, 60, 60)

    assert run_prefill(sched, budget=100) == [[(old, 60)], [(young, 40)]]  # too big to go together
    assert sched.running == [old] and sched.waiting == [young]
    assert run_prefill(sched, budget=100) == [[(young, 20)]]
    assert sched.running == [old, young]


def test_a_prompt_continuing_a_stored_prefix_is_fed_alone(clock):
    sched = scheduler(clock, max_batch=8)
    (resumed,) = submit(sched, clock, 50, cached=40)
    fresh = submit(sched, clock, 20, 20)

    assert run_prefill(sched, budget=100) == [[(resumed, 10)], [(fresh[0], 20), (fresh[1], 20)]]


def test_a_long_prompt_never_keeps_a_newcomer_waiting_more_than_one_step(clock):
    sched = scheduler(clock, max_batch=8)
    (long,) = submit(sched, clock, 1000)
    assert run_prefill(sched, budget=100) == [[(long, 100)]]
    (newcomer,) = submit(sched, clock, 30)

    first = run_prefill(sched, budget=100)  # the long one is older: it takes the budget
    second = run_prefill(sched, budget=100)  # the newcomer was passed over: it goes first

    assert first == [[(long, 100)]]
    assert second == [[(newcomer, 30)], [(long, 70)]]
    assert sched.running == [newcomer] and sched.waiting == [long]
    assert run_prefill(sched, budget=100) == [[(long, 100)]]  # then the long one goes on, oldest first


def test_a_failed_prompt_leaves_alone_and_the_others_join(clock):
    sched = scheduler(clock, max_batch=8)
    good, bad = submit(sched, clock, 10, 10)
    sched.prefill(100)
    good.feed(10)
    bad.error = RuntimeError("kernel fell over")

    assert sched.prefilled() == [good, bad]
    assert sched.running == [good] and sched.waiting == []


# --- leaving --------------------------------------------------------------------------


def test_finished_and_failed_sequences_leave_and_the_others_run_on(clock):
    sched = scheduler(clock, max_batch=8)
    rows = submit(sched, clock, 5, 5, 5, 5)
    run_prefill(sched, budget=100)

    rows[1].error = RuntimeError("probabilities contain nan")
    rows[3].finish_reason = "length"

    assert sched.leaving(rows) == [rows[1], rows[3]]
    assert sched.running == [rows[0], rows[2]]
    assert sched.leaving(sched.running) == []


def test_clearing_hands_back_every_in_flight_sequence(clock):
    sched = scheduler(clock, max_batch=8)
    running = submit(sched, clock, 5)
    run_prefill(sched, budget=100)
    waiting = submit(sched, clock, 5)

    assert sched.clear() == waiting + running and not sched.busy


# --- holding for a reply on its way ---------------------------------------------------


def test_running_replies_hold_for_an_announced_reply_at_most_hold_per_step(clock):
    sched = scheduler(clock, hold=HOLD)
    submit(sched, clock, 5)
    run_prefill(sched, budget=100)  # it runs: its first step is due within HOLD
    due = clock.now + HOLD

    clock.now += 0.03
    assert sched.hold_until(arriving=1) == pytest.approx(due)
    clock.now = due
    assert sched.hold_until(arriving=1) is None  # the step is due: it runs, announced or not
    sched.decoded()
    clock.now += 0.01
    assert sched.hold_until(arriving=1) == pytest.approx(due + HOLD)  # the next step's bound


def test_the_hold_ends_as_soon_as_the_announced_reply_arrives(clock):
    sched = scheduler(clock, hold=HOLD)
    (running,) = submit(sched, clock, 5)
    run_prefill(sched, budget=100)
    assert sched.hold_until(arriving=1) is not None

    clock.now += 0.02  # the reply is submitted: it is no longer on its way
    (newcomer,) = submit(sched, clock, 5)

    assert sched.hold_until(arriving=0) is None
    run_prefill(sched, budget=100)
    assert sched.running == [running, newcomer]  # the very next step decodes both


def test_an_admitted_prompt_waits_for_the_ones_announced_with_it_at_most_hold(clock):
    sched = scheduler(clock, hold=HOLD)
    (first,) = submit(sched, clock, 5)

    assert sched.hold_until(arriving=2) == pytest.approx(first.request.started + HOLD)
    clock.now += HOLD
    assert sched.hold_until(arriving=2) is None


def test_nobody_holds_without_a_hold_an_announcement_room_or_a_reply(clock):
    assert scheduler(clock, hold=HOLD).hold_until(arriving=1) is None  # nothing runs

    no_hold = scheduler(clock, hold=0.0)
    submit(no_hold, clock, 5)
    assert no_hold.hold_until(arriving=1) is None

    full = scheduler(clock, max_batch=1, hold=HOLD)
    submit(full, clock, 5)
    assert full.hold_until(arriving=1) is None  # what comes waits for room anyway

    quiet = scheduler(clock, hold=HOLD)
    submit(quiet, clock, 5)
    assert quiet.hold_until(arriving=0) is None
