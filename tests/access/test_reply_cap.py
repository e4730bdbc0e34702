"""The limit of replies at once for API calls that keep no conversation: each holds a running `UnkeptCallUsage` row
while it is answered (limits.py), freed when the call ends however it ends, and by the heartbeat when its process is
gone. A call at the limit waits a while for a place (CHAT_API_QUEUE_SECONDS), then gets 429 with Retry-After; a key
may have a limit of its own.

The calls go through the whole ASGI application (chatsite.asgi), as daphne drives it, on a scripted model."""

import asyncio
import json
import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import ApplicationCommunicator
from django.utils import timezone

from conversations.access import limits
from conversations.delivery.heartbeat import Heartbeat
from conversations.models import ApiKey, UnkeptCallUsage, writers
from tests.factories import install_scripted

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def unkept_key(owner, settings):
    settings.CHAT_MAX_REPLIES_PER_USER = 1
    install_scripted(chunks=["one ", "two ", "three"])
    return ApiKey.objects.issue(owner, "script", keep_calls=False)[1]


def completion_call(key, stream):
    from chatsite.asgi import application

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"host", b"testserver"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    call = ApplicationCommunicator(application, scope)
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return call, json.dumps(body).encode()


async def response_of(call, body, headers=None):
    """(status, body) of a whole response; its headers are put in `headers`, if given."""
    await call.send_input({"type": "http.request", "body": body})
    start = await call.receive_output(10)
    if headers is not None:
        headers.update((name.decode().lower(), value.decode()) for name, value in start["headers"])
    content = b""
    while True:
        part = await call.receive_output(10)
        content += part.get("body", b"")
        if not part.get("more_body"):
            return start["status"], content


async def test_a_stream_its_client_leaves_right_after_done_gives_its_place_back(unkept_key, owner):
    call, body = completion_call(unkept_key, stream=True)
    await call.send_input({"type": "http.request", "body": body})
    events = b""
    while b"[DONE]" not in events:
        events += (await call.receive_output(10)).get("body", b"")
    # The client closes as soon as it reads [DONE], while the database thread is busy with other work: the
    # request is cancelled before its place can be given back in that thread.
    busy = asyncio.ensure_future(database_sync_to_async(time.sleep)(0.5))
    await call.send_input({"type": "http.disconnect"})
    await busy
    await call.wait(5)

    status, content = await response_of(*completion_call(unkept_key, stream=False))
    assert status == 200, content  # the cap is 1: the first call's place is free again
    assert await database_sync_to_async(limits.in_flight)(owner) == []


async def test_a_call_being_answered_holds_its_place_and_another_is_refused(unkept_key, owner, settings):
    settings.CHAT_API_QUEUE_SECONDS = 0.3
    await database_sync_to_async(install_scripted)(chunks=["slow "] * 50, delay=0.05)
    first, body = completion_call(unkept_key, stream=True)
    await first.send_input({"type": "http.request", "body": body})
    assert (await first.receive_output(10))["status"] == 200
    headers, asked = {}, time.monotonic()
    status, content = await response_of(*completion_call(unkept_key, stream=False), headers)
    assert status == 429 and json.loads(content)["error"]["code"] == "too_many_replies"
    assert headers["retry-after"] == "1"
    assert time.monotonic() - asked >= 0.3  # it waited for a place first
    assert await database_sync_to_async(limits.in_flight)(owner) == [None]
    await first.send_input({"type": "http.disconnect"})
    await first.wait(5)
    assert await database_sync_to_async(limits.in_flight)(owner) == []


def test_the_heartbeat_ends_calls_whose_process_is_gone_and_keeps_its_own(owner, settings):
    gone = UnkeptCallUsage.objects.create(
        user=owner, model_name="m", writer="elsewhere:1:x", heartbeat_at=timezone.now() - timedelta(seconds=60)
    )
    silent = UnkeptCallUsage.objects.create(user=owner, model_name="m", writer="elsewhere:2:y", heartbeat_at=None)
    own = UnkeptCallUsage.begin(owner, "m")
    try:
        UnkeptCallUsage.objects.filter(pk=own.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=60))
        asyncio.run(Heartbeat(on_recovered=None).beat())
        ended = dict(UnkeptCallUsage.objects.values_list("pk", "ended_at"))
        assert ended[gone.pk] is not None and ended[silent.pk] is not None
        assert ended[own.pk] is None  # this process answers it: renewed, never ended by its own beat
        assert limits.in_flight(owner) == [None]
    finally:
        writers.calling.discard(own.pk)


async def test_a_call_at_the_limit_waits_for_a_place_and_is_answered_when_one_frees(unkept_key, owner, settings):
    settings.CHAT_API_QUEUE_SECONDS = 20
    await database_sync_to_async(install_scripted)(chunks=["slow "] * 20, delay=0.05)
    first, body = completion_call(unkept_key, stream=False)
    await first.send_input({"type": "http.request", "body": body})
    while await database_sync_to_async(limits.in_flight)(owner) == []:
        await asyncio.sleep(0.02)

    status, content = await response_of(*completion_call(unkept_key, stream=False))  # waits for the first

    assert status == 200, content
    assert (await first.receive_output(10))["status"] == 200
    rows = UnkeptCallUsage.objects.order_by("started_at").values_list("started_at", "ended_at")
    (_, first_ended), (second_started, _) = await database_sync_to_async(list)(rows)
    assert second_started >= first_ended  # the second took its place once the first gave it back
    assert json.loads(content)["choices"][0]["message"]["content"] == "slow " * 20


async def test_a_keys_own_limit_lets_its_calls_past_the_users_and_the_users_chats_still_count_them(
    unkept_key, owner, settings
):
    settings.CHAT_API_QUEUE_SECONDS = 0
    await database_sync_to_async(install_scripted)(chunks=["slow "] * 60, delay=0.05)
    batch_key = await database_sync_to_async(ApiKey.objects.issue)(owner, "batch", keep_calls=False)
    await database_sync_to_async(ApiKey.objects.filter(pk=batch_key[0].pk).update)(replies_at_once=2)
    running = []
    for _ in range(2):  # the user's limit is 1; the batch key's is 2
        call, body = completion_call(batch_key[1], stream=True)
        await call.send_input({"type": "http.request", "body": body})
        assert (await call.receive_output(10))["status"] == 200
        running.append(call)

    over_key = await response_of(*completion_call(batch_key[1], stream=False))
    over_user = await response_of(*completion_call(unkept_key, stream=False))

    assert over_key[0] == over_user[0] == 429
    assert "calls with the key 'batch': at most 2 at once" in json.loads(over_key[1])["error"]["message"]
    assert "at most 1 at once" in json.loads(over_user[1])["error"]["message"]
    for call in running:
        await call.send_input({"type": "http.disconnect"})
        await call.wait(5)
