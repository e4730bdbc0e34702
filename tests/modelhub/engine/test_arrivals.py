"""A worker holds its running replies' next step while a reply is on its way, within a bound.

The worker here serves a scripted backend that counts its decode steps: the test is
about the schedule, not the model."""

import threading

import pytest

from modelhub.backends.local import ScriptedBackend
from modelhub.engine.arrivals import arrivals
from modelhub.engine.request import Request
from modelhub.engine.worker import Worker
from modelhub.options import GenerationOptions
from tests.waiting import wait_until

OPTIONS = GenerationOptions(max_new_tokens=400).validated(2048)


class CountingBackend(ScriptedBackend):
    def __init__(self, chunks, delay):
        super().__init__(chunks, delay)
        self.steps = 0
        self.rows = []  # how many replies each step decoded

    def decode(self):
        stepped = super().decode()
        self.steps += 1
        self.rows.append(len(stepped))
        return stepped


@pytest.fixture
def worker():
    backend = CountingBackend([f"w{i} " for i in range(300)], delay=0.002)
    worker = Worker("counting", lambda progress: backend, hold=30.0)  # a bound far above what a test waits
    yield worker
    worker.close()


@pytest.fixture
def holds(monkeypatch):
    """How many times a worker began holding its next step for a reply on its way, and how many of
    those holds ended: the positive signal that the worker got to its next step and held it."""
    count = {"began": 0, "ended": 0}
    wait = arrivals.wait

    def counted(arrived, deadline):
        count["began"] += 1
        try:
            return wait(arrived, deadline)
        finally:
            count["ended"] += 1

    monkeypatch.setattr(arrivals, "wait", counted)
    return count


@pytest.fixture(autouse=True)
def no_announcement_left():
    yield
    assert len(arrivals) == 0


def request(arrival=None):
    return Request([{"role": "user", "content": "hi"}], OPTIONS, arrival=arrival)


def read_in_background(request):
    """Read the request to its end in a thread; returns the thread (the text lands in `request.text`)."""

    def read():
        request.text = "".join(request)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_running_replies_wait_for_an_announced_reply_then_decode_with_it(worker, holds):
    running = worker.submit(request())
    next(iter(running))  # it is decoding
    arrival = arrivals.expect()
    wait_until(lambda: holds["began"])  # a step in flight finished, and the next one holds
    held_at = worker.backend.steps

    assert holds["ended"] == 0 and worker.backend.steps == held_at  # no step while the reply is on its way
    newcomer = worker.submit(request(arrival))
    readers = [read_in_background(r) for r in (running, newcomer)]
    for reader in readers:
        reader.join(10)
    assert newcomer.text.startswith("w0 w1 ") and newcomer.usage.finish_reason == "stop"
    assert worker.backend.rows[held_at] == 2  # the very next step decoded both


def test_an_announcement_given_up_lets_the_running_replies_go_on_at_once(worker, holds):
    running = worker.submit(request())
    next(iter(running))
    arrival = arrivals.expect()
    wait_until(lambda: holds["began"])  # the worker holds its next step
    held_at = worker.backend.steps

    arrival.done()  # the turn was refused: no request will come
    reader = read_in_background(running)
    reader.join(10)
    assert not reader.is_alive() and worker.backend.steps > held_at + 100


def test_a_reply_announced_but_never_sent_holds_each_step_only_up_to_the_bound():
    backend = CountingBackend([f"w{i} " for i in range(20)], delay=0)
    worker = Worker("bounded", lambda progress: backend, hold=0.01)
    arrival = arrivals.expect()
    try:
        running = worker.submit(request())
        reader = read_in_background(running)
        reader.join(10)
        assert not reader.is_alive() and running.text.endswith("w19 ")
        assert backend.steps == 20  # every step ran, each after waiting out the bound
    finally:
        arrival.done()
        worker.close()


def test_replies_submitted_while_others_are_announced_start_together(worker, holds):
    announced = [arrivals.expect() for _ in range(3)]
    requests = []
    for arrival in announced[:-1]:  # one after another, as saving turns would
        requests.append(worker.submit(request(arrival)))
        wait_until(lambda: holds["began"] >= len(requests))  # the worker took it, then held for the others
    requests.append(worker.submit(request(announced[-1])))
    readers = [read_in_background(r) for r in requests]
    for reader in readers:
        reader.join(10)

    assert all(r.text.startswith("w0 w1 ") for r in requests)
    assert worker.backend.rows[0] == 3  # prefilled together, the first step decoded all three
