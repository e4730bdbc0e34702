"""Faults, each met with one clear error frame, saved rows and a server that serves the next turn.

A stop reaches a reply still queued (behind a full batch, or while its model loads)
at once. An exception or an out-of-memory error in a decode step is raised by a
forward hook on the tiny Llama, so the real engine path meets it. A model that fails
to load loads once its folder is fixed, without a restart. A prompt twice the context
window is refused as such.
"""

import shutil
import threading
import time

import pytest
import torch
from asgiref.sync import sync_to_async

from conversations.models import Conversation
from modelhub import api
from modelhub.backends import loading
from modelhub.backends.local import ScriptedBackend
from modelhub.engine.request import Request
from modelhub.engine.worker import Worker
from modelhub.models import ModelSpec
from modelhub.options import GenerationOptions, ModelhubError
from modelhub.registry import registry
from tests.factories import install_scripted
from tests.modelhub.served import Served, ask, read
from tests.sockets import frames_until, messages_of, nothing_waiting, open_socket

HELLO = [{"role": "user", "content": "hello there, how are you doing today?"}]
WORDS = [f"w{i} " for i in range(500)]

pytestmark = [pytest.mark.django_db(transaction=True)]


# --- stop reaches a queued request at once -------------------------------------------


class CountingBackend(ScriptedBackend):
    """A scripted model that counts its decode steps."""

    steps = 0

    def decode(self):
        self.steps += 1
        return super().decode()


def test_a_request_cancelled_behind_a_full_batch_ends_without_waiting_for_a_slot():
    backend = CountingBackend(chunks=WORDS, delay=0.01)
    worker = Worker("one-slot", lambda progress: backend, max_batch=1)
    running = worker.submit(Request(HELLO, GenerationOptions(max_new_tokens=500)))
    words = iter(running)
    next(words)  # it holds the only slot
    queued = worker.submit(Request(HELLO, GenerationOptions(max_new_tokens=500)))
    steps = backend.steps

    queued.cancel()

    assert list(queued) == [] and backend.steps - steps <= 1
    assert queued.usage.finish_reason == "cancelled" and queued.usage.completion_tokens == 0
    assert next(words) and running.usage is None  # the running one goes on
    running.cancel()
    assert list(words) is not None and running.usage.finish_reason == "cancelled"
    worker.close()
    assert len(backend.calls) == 1  # the cancelled one was never opened


def test_a_request_cancelled_while_its_model_loads_ends_at_once_and_the_others_are_served():
    gate = threading.Event()
    backend = CountingBackend(chunks=["fine"])
    worker = Worker("loading", lambda progress: gate.wait(10) and backend)
    kept = worker.submit(Request(HELLO, GenerationOptions()))
    dropped = worker.submit(Request(HELLO, GenerationOptions()))

    dropped.cancel()

    assert list(dropped) == [] and dropped.usage.finish_reason == "cancelled"
    assert worker.state == "loading"
    gate.set()
    assert "".join(kept) == "fine" and kept.usage.finish_reason == "stop"
    worker.close()
    assert len(backend.calls) == 1


# --- a failing step: one row or all rows ------------------------------------------


class StepFault:
    """A forward pre-hook raising `error` in the `at`-th decode step (one new token a row), once."""

    def __init__(self, error, at=4):
        self.error, self.at, self.steps, self.raised_at = error, at, 0, None

    def __call__(self, module, args, kwargs):
        if kwargs["input_ids"].shape[1] != 1 or self.raised_at is not None:
            return
        self.steps += 1
        if self.steps == self.at:
            self.raised_at = time.monotonic()
            raise self.error


def test_a_failed_forward_pass_fails_every_row_of_its_step_and_the_next_requests_match(tiny_spec):
    fault = StepFault(RuntimeError("device-side assert triggered"), at=3)
    served = Served(tiny_spec, hook=fault)
    running = [served.start(ask(p), max_new_tokens=30, ignore_eos=True) for p in ("hi", "read books")]
    served.open()

    for request in running:
        with pytest.raises(ModelhubError, match="device-side assert triggered") as failure:
            read(request)
        assert failure.value.code == "generation_failed"
    batch = served.backend.decoder.batch
    assert (batch.rows, batch.cache, batch.mask) == ([], None, None)  # their caches are gone

    again = [served.start(ask(p), max_new_tokens=30, ignore_eos=True) for p in ("hi", "read books", "hi")]
    texts = [read(r) for r in again]
    assert texts[0] == texts[2] and all(r.usage.completion_tokens == 30 for r in again)
    assert served.worker.state == "ready"


def test_a_failure_in_one_rows_sampling_fails_that_row_alone(tiny_spec, monkeypatch):
    from modelhub.decoding.sampler import Sampler

    scores = Sampler.scores

    def fragile(self, logits, ids, step):  # only sampled rows call this after their first token
        if step == 3:
            raise RuntimeError("probabilities contain nan")
        return scores(self, logits, ids, step)

    monkeypatch.setattr(Sampler, "scores", fragile)
    served = Served(tiny_spec)
    served.open()
    alone = read(served.start(ask("hi"), max_new_tokens=12, ignore_eos=True))
    greedy = served.start(ask("hi"), max_new_tokens=12, ignore_eos=True)
    sampled = served.start(ask("read books"), max_new_tokens=12, ignore_eos=True, temperature=0.8, seed=1)

    with pytest.raises(ModelhubError, match="probabilities contain nan"):
        read(sampled)
    assert read(greedy) == alone and greedy.usage.completion_tokens == 12


def test_a_request_that_runs_out_of_memory_joining_the_batch_fails_alone(tiny_spec, monkeypatch):
    from modelhub.engine import batch

    served = Served(tiny_spec)
    served.open()
    prompts = ("hi", "read books")
    alone = [read(served.start(ask(p), max_new_tokens=40, ignore_eos=True)) for p in prompts]
    short = []

    class ShortOfMemory:  # the batch's torch, whose `zeros` fails while `short` says so
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def zeros(*args, **kwargs):
            if short and short.pop():
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
            return torch.zeros(*args, **kwargs)

    monkeypatch.setattr(batch, "torch", ShortOfMemory())
    running = [served.start(ask(p), max_new_tokens=40, ignore_eos=True) for p in prompts]
    first = iter(running[0])
    head = next(first)  # both decode together now
    short.append(True)  # the next new buffers fail half-made: the layers' are allocated, the mask's is not
    late = served.start(ask("that sounds fun, " * 15), max_new_tokens=20)  # longer than both: new buffers

    with pytest.raises(ModelhubError, match="ran out of memory") as failure:
        read(late)
    assert failure.value.code == "out_of_memory"
    assert not short  # it was the joining that failed
    assert [head + read(first), read(running[1])] == alone  # the batch ran on, untouched


def test_a_bug_in_the_workers_loop_fails_its_requests_and_the_next_one_gets_a_fresh_worker(monkeypatch):
    spec = ModelSpec.objects.create(name="echo", backend="scripted", source="echo")
    bugs, drop = [IndexError("list index out of range")], Worker._drop_cancelled

    def buggy(self):
        if bugs:
            raise bugs.pop()
        drop(self)

    monkeypatch.setattr(Worker, "_drop_cancelled", buggy)
    with pytest.raises(ModelhubError, match="model 'echo' failed: list index out of range"):
        read(api.start(spec, HELLO))
    assert registry.status()["echo"]["state"] == "failed"

    assert read(api.start(spec, HELLO)) == HELLO[0]["content"]
    assert registry.load_counts["echo"] == 2


# --- through the websocket ---------------------------------------------------------


async def send(socket, content, options=None):
    await socket.send_json_to({"type": "send", "content": content, **({"options": options} if options else {})})


async def failed_turn(socket, content, options=None):
    """Send a turn that fails: its frames up to `done`, and when its error frame arrived."""
    await send(socket, content, options)
    frames, error_at = [], None
    while not frames or frames[-1]["type"] != "done":
        frames.append(await socket.receive_json_from(timeout=30))
        if frames[-1]["type"] == "error":
            error_at = time.monotonic()
    assert await nothing_waiting(socket)  # nothing more after `done`
    return frames, error_at


async def saved_failure(conversation, frames, code, said, question):
    """Check the turn's frames and rows: one error frame, after the question, and both rows saved."""
    errors = [f for f in frames if f["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == code and said in errors[0]["message"]
    user_msg, reply = (await messages_of(conversation))[-2:]
    assert (user_msg.role, user_msg.content, user_msg.status) == ("user", question, "complete")
    assert reply.status == "error" and reply.error == errors[0]["message"]
    assert reply.content == "".join(f["text"] for f in frames if f["type"] == "chunk")  # what was streamed is kept
    assert (frames[-1]["message_id"], frames[-1]["status"]) == (reply.pk, "error")
    shown = [i for i, f in enumerate(frames) if f["type"] == "message" and f["message_id"] == user_msg.pk]
    assert shown and shown[0] < frames.index(errors[0]), "the question must be shown before its reply's error"
    return reply


async def serves_on(socket, owner):
    """A next turn on the same socket, and one in a new conversation, complete."""
    await send(socket, "are you still there?")
    frames = await frames_until(socket, "done", timeout=30)
    assert frames[-1]["status"] == "complete" and not [f for f in frames if f["type"] == "error"]
    fresh = await Conversation.objects.acreate(owner=owner)
    other, _, _ = await open_socket(owner, fresh)
    await send(other, "hello there")
    frames = await frames_until(other, "done", timeout=30)
    assert frames[-1]["status"] == "complete" and not [f for f in frames if f["type"] == "error"]
    await other.disconnect()


async def test_stopping_a_reply_queued_behind_a_full_batch_ends_it_while_the_running_one_goes_on(owner, settings):
    settings.MODELHUB_MAX_BATCH = 1
    await sync_to_async(install_scripted)(WORDS, 0.02)
    first_conversation = await Conversation.objects.acreate(owner=owner)
    second_conversation = await Conversation.objects.acreate(owner=owner)
    first, _, _ = await open_socket(owner, first_conversation)
    second, _, _ = await open_socket(owner, second_conversation)
    await send(first, "one")
    await frames_until(first, "chunk")
    await send(second, "two")
    await frames_until(second, "message")
    await frames_until(second, "message")  # its reply exists, queued behind the first

    await second.send_json_to({"type": "stop"})
    done = (await frames_until(second, "done"))[-1]

    assert done["status"] == "stopped"
    _, queued = await messages_of(second_conversation)
    assert (queued.status, queued.finish_reason, queued.content) == ("stopped", "cancelled", "")
    _, running = await messages_of(first_conversation)
    assert running.status == "streaming"  # it goes on
    await frames_until(first, "chunk")
    await first.send_json_to({"type": "stop"})
    assert (await frames_until(first, "done"))[-1]["status"] == "stopped"
    await first.disconnect()
    await second.disconnect()


@pytest.fixture
def tiny_worker(tiny_spec):
    """The tiny Llama loaded through the registry (warm-up and all), having served one reply."""
    tiny_spec.max_new_tokens = 32  # of its 256-token context: room for a prompt
    tiny_spec.save()
    read(api.start(tiny_spec, HELLO))
    return registry.worker(tiny_spec)


@pytest.mark.parametrize(
    "error, code, said",
    [
        (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED"), "generation_failed", "CUBLAS_STATUS_EXECUTION_FAILED"),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            "out_of_memory",
            "ran out of memory",
        ),
    ],
    ids=["exception", "out-of-memory"],
)
async def test_a_fault_in_a_decode_step_is_one_error_and_the_model_serves_on(
    owner, conversation, tiny_worker, error, code, said
):
    fault = StepFault(error)
    tiny_worker.backend.loaded.model.register_forward_pre_hook(fault, with_kwargs=True)
    socket, _, _ = await open_socket(owner, conversation)

    frames, error_at = await failed_turn(socket, "where do you hike?", {"max_new_tokens": 40, "ignore_eos": True})

    reply = await saved_failure(conversation, frames, code, said, "where do you hike?")
    assert error_at - fault.raised_at < 1.0
    assert reply.content  # the tokens before the failed step were streamed and kept
    batch = tiny_worker.backend.decoder.batch
    assert (batch.rows, batch.cache) == ([], None)
    stored = registry.status()["tiny"]["kv_cache_entries"]
    assert stored == 0 if code == "out_of_memory" else stored > 0  # out of memory: stored prefixes freed too
    await serves_on(socket, owner)
    assert registry.load_counts["tiny"] == 1 and registry.status()["tiny"]["state"] == "ready"  # never reloaded
    await socket.disconnect()


def delete_folder(folder):
    shutil.rmtree(folder)


def corrupt_weights(folder):
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 100)


@pytest.mark.parametrize(
    "damage, said",
    [(delete_folder, "does not exist"), (corrupt_weights, "could not load the weights of")],
    ids=["deleted", "corrupt"],
)
async def test_a_model_that_fails_to_load_is_one_error_and_loads_once_its_folder_is_fixed(
    owner, conversation, tiny_model_dir, tmp_path, monkeypatch, damage, said
):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    await ModelSpec.objects.acreate(
        name="copied", source=str(folder), device="cpu", is_default=True, temperature=0, max_new_tokens=32
    )
    damage(folder)  # after registration, as an admin's or a disk's mistake would
    failed_at, load = [], loading.load

    def timed_load(*args, **kwargs):
        try:
            return load(*args, **kwargs)
        except Exception:
            failed_at.append(time.monotonic())
            raise

    monkeypatch.setattr(loading, "load", timed_load)
    socket, _, _ = await open_socket(owner, conversation)

    frames, error_at = await failed_turn(socket, "hello?")

    await saved_failure(conversation, frames, "model_load_failed", said, "hello?")
    assert error_at - failed_at[0] < 1.0
    assert registry.status()["copied"]["state"] == "failed" and said in registry.status()["copied"]["error"]
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(tiny_model_dir, folder)  # fixed: the next request loads it afresh, no restart
    await serves_on(socket, owner)
    assert registry.load_counts["copied"] == 2 and registry.status()["copied"]["state"] == "ready"
    await socket.disconnect()


def test_the_admins_reload_loads_a_model_whose_folder_was_fixed(staff_client, tiny_model_dir, tmp_path):
    from django.urls import reverse

    folder = tmp_path / "model"
    spec = ModelSpec.objects.create(name="copied", source=str(folder), device="cpu", temperature=0, max_new_tokens=8)
    with pytest.raises(ModelhubError, match="does not exist"):
        read(api.start(spec, HELLO))
    shutil.copytree(tiny_model_dir, folder)
    changelist = reverse("admin:modelhub_modelspec_changelist")

    staff_client.post(changelist, {"action": "reload_models", "_selected_action": [spec.pk]})

    assert read(api.start(spec, HELLO)) is not None and registry.status()["copied"]["state"] == "ready"
    assert registry.load_counts["copied"] == 2
    assert "loaded on cpu" in staff_client.get(changelist).content.decode()


async def test_a_prompt_twice_the_context_window_is_refused_as_too_long_and_the_model_serves_on(
    owner, conversation, tiny_worker
):
    context = registry.status()["tiny"]["context_length"]
    question = "that sounds fun. where do you hike? " * (2 * context // 8)
    socket, _, _ = await open_socket(owner, conversation)
    sent_at = time.monotonic()

    frames, error_at = await failed_turn(socket, question)

    reply = await saved_failure(conversation, frames, "prompt_too_long", "does not fit", question)
    assert error_at - sent_at < 1.0 and reply.content == ""
    assert f"context window of {context} tokens" in reply.error
    await serves_on(socket, owner)
    await socket.disconnect()
