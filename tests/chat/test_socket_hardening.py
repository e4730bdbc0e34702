"""The chat socket under hostile and unlucky input: every frame answered, sessions re-checked,
origins compared whole, floods limited, and a consumer that crashes still lets go of its reply."""

import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session
from django.test import Client

from chatsite.asgi import application
from conversations.chat import replies
from conversations.chat.consumers import ChatConsumer
from conversations.delivery.groups import group_for
from tests.sockets import HOST, frames_until, messages_of, open_socket, scripted, session_cookie, settled_messages_of

pytestmark = [pytest.mark.django_db(transaction=True)]


async def refusal_after(socket, raw):
    await socket.send_to(text_data=raw)
    return await socket.receive_json_from(timeout=5)


@pytest.mark.parametrize(
    "raw, code",
    [
        ("[" * 3000 + "]" * 3000, "bad_json"),
        ('{"type": "send", "content": "a lone \\udc00 surrogate"}', "invalid_text"),
        ('{"type": "send", "content": "a NUL \\u0000 here"}', "invalid_text"),
        ('{"type": "send", "content": "hi", "options": {"seed": 1e400}}', "invalid_options"),
        ('{"type": "send", "content": "hi", "options": {"top_k": 1e400}}', "invalid_options"),
        ('{"type": "send", "content": "hi", "options": {"max_new_tokens": 1e400}}', "invalid_options"),
        ('{"type": "send", "content": "hi", "options": {"seed": 1180591620717411303424}}', "invalid_options"),
        ('{"type": "regenerate", "message_id": 99999999999999999999999}', "unknown_message"),
        ('{"type": "edit", "message_id": 9223372036854775807, "content": "x"}', "unknown_message"),
    ],
)
async def test_a_hostile_frame_gets_one_error_and_the_socket_goes_on(owner, conversation, raw, code):
    await scripted(["fine"])
    socket, _, _ = await open_socket(owner, conversation)
    error = await refusal_after(socket, raw)
    assert error["type"] == "error" and error["code"] == code, error
    assert await messages_of(conversation) == []
    await socket.send_json_to({"type": "send", "content": "still there?"})
    assert (await frames_until(socket, "done"))[-1]["status"] == "complete"
    await socket.disconnect()


async def test_a_binary_frame_is_refused_and_the_socket_goes_on(owner, conversation):
    await scripted(["fine"])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_to(bytes_data=b"\x00\xff")
    assert (await socket.receive_json_from(timeout=5))["code"] == "bad_frame"
    await socket.send_json_to({"type": "send", "content": "ok"})
    assert (await frames_until(socket, "done"))[-1]["status"] == "complete"
    await socket.disconnect()


@pytest.mark.parametrize("path", ["/ws/nope/", "/ws/conversations/abc/", "/ws/conversations/99999999999999999999/"])
async def test_unknown_socket_paths_are_refused_at_the_handshake_not_failed(owner, path):
    headers = [HOST, (b"origin", b"http://127.0.0.1:8000"), await session_cookie(owner)]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect()  # an error in the application would raise here
    assert not connected


@pytest.mark.parametrize(
    "origin", [b"http://127.0.0.1:9", b"https://127.0.0.1:8000", b"http://localhost:8000", b"null", b"not a url"]
)
async def test_an_origin_that_differs_in_scheme_host_or_port_is_refused(owner, conversation, origin):
    _, connected, _ = await open_socket(owner, conversation, origin=(b"origin", origin))
    assert not connected


async def test_a_trusted_origin_of_a_tls_proxy_is_accepted(owner, conversation, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.org"]
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    socket, connected, _ = await open_socket(owner, conversation, origin=(b"origin", b"https://chat.example.org"))
    assert connected
    await socket.disconnect()


async def test_after_logout_the_socket_is_closed_and_nothing_it_sends_is_saved(owner, conversation):
    await scripted(["should not be"])
    cookie = await session_cookie(owner)
    communicator = WebsocketCommunicator(
        application,
        f"/ws/conversations/{conversation.pk}/",
        headers=[HOST, (b"origin", b"http://127.0.0.1:8000"), cookie],
    )
    assert (await communicator.connect())[0]

    browser = Client()
    browser.cookies["sessionid"] = cookie[1].decode().split("=", 1)[1]
    await sync_to_async(browser.post)("/logout/")

    assert (await communicator.receive_json_from(timeout=5))["code"] == "session_ended"
    assert (await communicator.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4401}
    assert await messages_of(conversation) == []


async def test_a_frame_from_a_session_that_ended_elsewhere_is_refused(owner, conversation):
    await scripted(["should not be"])
    socket, _, _ = await open_socket(owner, conversation)
    await sync_to_async(Session.objects.all().delete)()  # expired, or logged out in another process

    await socket.send_json_to({"type": "send", "content": "after the session"})
    assert (await socket.receive_json_from(timeout=5))["code"] == "session_ended"
    assert (await socket.receive_output(timeout=5))["code"] == 4401
    assert await messages_of(conversation) == []


async def test_a_disabled_account_can_send_nothing_more(owner, conversation):
    await scripted(["should not be"])
    socket, _, _ = await open_socket(owner, conversation)
    owner.is_active = False
    await sync_to_async(owner.save)()

    await socket.send_json_to({"type": "send", "content": "still me?"})
    assert (await socket.receive_json_from(timeout=5))["code"] == "session_ended"
    assert await messages_of(conversation) == []


async def test_a_flood_of_frames_is_refused_past_the_rate_without_touching_the_database(owner, conversation, settings):
    settings.CHAT_SOCKET_FRAMES_BURST = 5
    settings.CHAT_SOCKET_FRAMES_PER_SECOND = 0.5
    await scripted(["x"])
    socket, _, _ = await open_socket(owner, conversation)
    codes = []
    for _ in range(12):
        await socket.send_json_to({"type": "stop"})
        codes.append((await socket.receive_json_from(timeout=5))["code"])
    assert codes == ["nothing_to_stop"] * 5 + ["rate_limited"] * 7
    await socket.send_to(text_data="not json")  # frames that never reach the database are not limited
    assert (await socket.receive_json_from(timeout=5))["code"] == "bad_json"
    await socket.disconnect()


async def test_a_consumer_that_crashes_stops_watching_so_its_orphaned_reply_is_interrupted(
    owner, conversation, monkeypatch
):
    await scripted([f"w{i} " for i in range(400)], delay=0.02)
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "go on"})
    await frames_until(socket, "chunk")
    assert replies._watchers[conversation.pk] == 1

    async def broken(self, event):
        raise RuntimeError("a bug in the consumer")

    monkeypatch.setattr(ChatConsumer, "reply_roll_call", broken)
    await get_channel_layer().group_send(group_for(conversation.pk), {"type": "reply.roll_call", "reply_to": "x"})
    with pytest.raises(RuntimeError):
        await socket.wait(timeout=5)

    assert replies._watchers[conversation.pk] == 0
    _, reply = await settled_messages_of(conversation)
    assert reply.status == "interrupted" and reply.content.startswith("w0 ")


async def test_a_sync_frame_redraws_the_branch_and_brings_the_reply_being_written(owner, conversation):
    await scripted([f"w{i} " for i in range(60)], delay=0.02)
    first, _, _ = await open_socket(owner, conversation)
    await first.send_json_to({"type": "send", "content": "go"})
    await frames_until(first, lambda f: f["type"] == "chunk" and f["offset"] > 10)

    await first.send_json_to({"type": "sync"})
    frames = await frames_until(first, lambda f: f["type"] == "message" and "offset" in f)
    path = next(f for f in frames if f["type"] == "path")
    snapshot = frames[-1]
    assert 'data-raw="go"' in path["html"] and snapshot["status"] == "streaming" and snapshot["offset"] > 10
    assert json.dumps(snapshot)
    await first.send_json_to({"type": "stop"})
    await frames_until(first, "done")
    await first.disconnect()
