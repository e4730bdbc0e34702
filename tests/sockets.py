"""The chat websocket in process: channels' WebsocketCommunicator on the real ASGI application
(origin check, session auth, routing), as a browser on 127.0.0.1:8000 would open it.

    socket, connected, code = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "hi"})
    frames = await frames_until(socket, "done")

(The same over real sockets to a real daphne is in tests/live.py.)"""

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chatsite.asgi import application
from conversations.models import Message
from tests.factories import install_scripted
from tests.waiting import until

ORIGIN = (b"origin", b"http://127.0.0.1:8000")
HOST = (b"host", b"127.0.0.1:8000")  # the address the socket is opened on, as a browser sends it


@sync_to_async
def session_cookie(user):
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


async def open_socket(user, conversation, origin=ORIGIN):
    headers = [HOST, origin] if origin else [HOST]
    if user is not None:
        headers.append(await session_cookie(user))
    communicator = WebsocketCommunicator(application, f"/ws/conversations/{conversation.pk}/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def frames_until(communicator, kind, timeout=10):
    """All frames up to and including the first of `kind` (a type, or a test of the frame)."""
    matches = kind if callable(kind) else lambda frame: frame["type"] == kind
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=timeout)
        frames.append(frame)
        if matches(frame):
            return frames


@sync_to_async
def messages_of(conversation):
    return list(Message.objects.filter(conversation=conversation).order_by("id"))


@sync_to_async
def scripted(chunks=None, delay=0.0):
    return install_scripted(chunks, delay)


async def settled_messages_of(conversation, timeout=10):
    """The conversation's messages once none of its replies is streaming any more (its end was saved)."""

    async def settled():
        messages = await messages_of(conversation)
        return messages if all(message.status != "streaming" for message in messages) else None

    return await until(settled, timeout=timeout, what="every reply ended")


async def nothing_waiting(communicator):
    """True when no frame waits on this socket: a frame of an unknown type, which the server answers at once
    with one error frame (and which touches no database and no rate limit), gets the very next frame. A
    positive signal, where listening a while for silence would only hope that nothing comes later."""
    await communicator.send_json_to({"type": "anything-waiting?"})
    frame = await communicator.receive_json_from(timeout=10)
    assert frame["type"] == "error" and frame["code"] == "unknown_type", frame
    return True
