"""Who writes a reply: a streaming row whose writer is gone is ended `interrupted` with its text,
and a live writer's rows are never touched (the live two-process version is test_deployed.py)."""

import asyncio
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from chatsite.asgi import KeepHeartbeat
from conversations.chat.replies import Flushes
from conversations.delivery.heartbeat import Heartbeat
from conversations.models import Message, writers
from conversations.models.message import WRITER_GONE

HOST = socket.gethostname()


@pytest.fixture
def spec(db):
    from modelhub.models import ModelSpec

    return ModelSpec.objects.create(name="m", source="-", backend="scripted")


@pytest.fixture(scope="module")
def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def streaming(conversation, spec, writer, text="half a sent", beat_age=0.0):
    reply = conversation.start_reply(spec, {})
    reply.save_partial(text)
    Message.objects.filter(pk=reply.pk).update(writer=writer, heartbeat_at=timezone.now() - timedelta(seconds=beat_age))
    return reply


def status_and_text(reply):
    reply.refresh_from_db()
    return reply.status, reply.content


def test_a_reply_whose_process_on_this_host_exited_is_interrupted_with_its_text(conversation, spec, dead_pid):
    reply = streaming(conversation, spec, f"{HOST}:{dead_pid}:0badf00d")

    ended = Message.objects.interrupt_orphans()

    assert [m.pk for m in ended] == [reply.pk]
    assert status_and_text(reply) == ("interrupted", "half a sent")
    reply.refresh_from_db()
    assert reply.error == WRITER_GONE and reply.finished_at is not None


def test_a_live_writer_on_this_host_is_left_alone(conversation, spec):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as other:
        reply = streaming(conversation, spec, f"{HOST}:{other.pid}:12345678")
        assert Message.objects.interrupt_orphans() == []
        other.kill()
    assert status_and_text(reply) == ("streaming", "half a sent")


def test_a_writer_elsewhere_is_judged_by_its_heartbeat(conversation, spec, settings):
    settings.CHAT_WRITER_TIMEOUT_SECONDS = 30
    fresh = streaming(conversation, spec, "another-host:4242:aaaaaaaa", text="fresh", beat_age=5)
    other = conversation.__class__.objects.create(owner=conversation.owner)
    silent = streaming(other, spec, "another-host:4243:bbbbbbbb", text="silent", beat_age=31)

    assert [m.pk for m in Message.objects.interrupt_orphans()] == [silent.pk]
    assert status_and_text(fresh) == ("streaming", "fresh")
    assert status_and_text(silent) == ("interrupted", "silent")


def test_a_row_with_no_writer_is_orphaned(conversation, spec):
    reply = streaming(conversation, spec, "")
    assert [m.pk for m in Message.objects.interrupt_orphans()] == [reply.pk]


def test_the_replies_this_process_writes_are_never_ended_by_its_own_sweep(conversation, spec, settings):
    reply = streaming(conversation, spec, writers.identity(), beat_age=3600)
    writers.writing.add(reply.pk)
    try:
        assert Message.objects.interrupt_orphans() == []
        assert Message.objects.renew() == 1
    finally:
        writers.writing.discard(reply.pk)
    reply.refresh_from_db()
    assert timezone.now() - reply.heartbeat_at < timedelta(seconds=5)


def test_a_row_this_process_saved_but_no_longer_writes_goes_when_its_heartbeat_does(conversation, spec, settings):
    settings.CHAT_WRITER_TIMEOUT_SECONDS = 30
    recent = streaming(conversation, spec, writers.identity(), beat_age=1)
    assert Message.objects.interrupt_orphans() == []
    Message.objects.filter(pk=recent.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=60))
    assert [m.pk for m in Message.objects.interrupt_orphans()] == [recent.pk]


def test_the_writers_final_save_wins_over_an_interrupted_mark_made_while_it_was_silent(conversation, spec):
    reply = streaming(conversation, spec, writers.identity(), beat_age=3600)
    Message.objects.interrupt_orphans()
    assert status_and_text(reply) == ("interrupted", "half a sent")

    assert reply.finish("complete", "half a sentence, whole") is True
    assert status_and_text(reply) == ("complete", "half a sentence, whole")


def test_another_writers_final_save_does_not_revive_an_ended_reply(conversation, spec, dead_pid):
    reply = streaming(conversation, spec, f"{HOST}:{dead_pid}:0badf00d")
    Message.objects.interrupt_orphans()
    assert reply.finish("complete", "late") is False
    assert status_and_text(reply) == ("interrupted", "half a sent")


@pytest.mark.django_db(transaction=True)
def test_the_first_request_of_a_process_recovers_and_announces_what_dead_writers_left(conversation, spec, dead_pid):
    reply = streaming(conversation, spec, f"{HOST}:{dead_pid}:0badf00d")
    announced, calls = [], []

    async def on_recovered(messages):
        announced.extend(m.pk for m in messages)

    async def app(scope, receive, send):
        calls.append(scope["type"])

    async def two_requests():
        wrapped = KeepHeartbeat(app, Heartbeat(on_recovered))
        await wrapped({"type": "http"}, None, None)
        await wrapped({"type": "websocket"}, None, None)
        await asyncio.wait_for(wrapped.heartbeat.recovered.wait(), 10)  # the requests did not wait for it
        wrapped.heartbeat.task.cancel()

    async_to_sync(two_requests)()

    assert status_and_text(reply) == ("interrupted", "half a sent")
    assert announced == [reply.pk]
    assert calls == ["http", "websocket"]


def test_is_gone_reads_names_it_cannot_parse_as_alive_unless_empty():
    assert writers.is_gone("") is True
    assert writers.is_gone(writers.identity()) is False
    assert writers.is_gone(f"{HOST}:not-a-pid:x") is False
    assert writers.is_gone(f"{HOST}:{10**30}:x") is False
    assert writers.is_gone("elsewhere:1:x") is False


def test_partial_saves_start_at_the_first_text_and_space_out_up_to_the_interval():
    now = [0.0]
    flushes = Flushes(2.0, clock=lambda: now[0])
    due_at = []
    for step in range(100):  # a chunk every 0.05 s for 5 s
        now[0] = step * 0.05
        if flushes.due():
            due_at.append(round(now[0], 2))
    assert due_at == [0.0, 0.25, 0.75, 1.75, 3.75]  # then every 2 s


def test_a_reply_whose_writer_died_while_it_thought_keeps_its_reasoning_and_no_answer(conversation, spec, dead_pid):
    reply = streaming(conversation, spec, f"{HOST}:{dead_pid}:0badf00d")
    reply.save_partial("", reasoning="first, the question asks")

    Message.objects.interrupt_orphans()

    reply.refresh_from_db()
    assert (reply.status, reply.content, reply.reasoning) == ("interrupted", "", "first, the question asks")
