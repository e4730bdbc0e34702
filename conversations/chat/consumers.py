"""The chat websocket: one socket per open conversation page.

    ws/conversations/<id>/   refused for anonymous users and for anyone but the owner (close 4404)

Client frames (JSON):
    {"type": "send", "content": "..."[, "options": {...}]}
                                           a user message (at most CHAT_MAX_MESSAGE_CHARS), with
                                           optional generation options (temperature, top_p, top_k,
                                           max_new_tokens, repetition_penalty, seed, ignore_eos)
    {"type": "edit", "message_id", "content"[, "options"]}   a new version of a question (new branch)
    {"type": "regenerate", "message_id"[, "options"]}       another answer (a sibling of that one)
    {"type": "continue", "message_id"[, "options"]}         more of an answer cut by the token limit
    {"type": "alternative", "message_id", "token", "choice"[, "options"]}  another answer that begins as this
                                           one did up to `token`, then writes alternative `choice` there
                                           and goes on (inspection/tokens.py)
    {"type": "compare", "content", "models": [key, key]}    one question to two model choices at once
    {"type": "stop"}                       stop the reply being written
    {"type": "sync"}                       after a lost socket: the active branch again, and where
                                           the replies being written are
Server frames (JSON):
    {"type": "message", "message_id", "status", "html"[, "offset"]}  a message, rendered (with
                                           `offset`: a reply being written, as far as it goes)
    {"type": "chunk", "message_id", "offset", "text"}  text to append at `offset` (UTF-16 units)
    {"type": "status", "message_id", "text"}           what a reply waits for before its first chunk
                                           ("loading chitchat… 3 s, loading weights"), every 0.5 s
    {"type": "done", "message_id", "status", "html"}   the reply's final rendering
    {"type": "title", "title"}                         the conversation's (new) title
    {"type": "path", "html"}                           the whole active branch, after a branch change
    {"type": "error", "code", "message"}               a refusal; the socket stays open
Close codes: 4404 not this user's conversation (or none), 4401 logged out / session ended,
4403 the account may not chat (no role allows it, or its role was removed while the socket was open),
4503 the server could not set the socket up (the database or channel layer is away: retry).

The handshake never waits for the database: the socket is accepted at once (the origin, the id
and the presence of a session cookie are checked before, from the request alone), and then its
session, user and conversation are read
in one trip to the database (retried while it is away, for CHAT_DB_RETRY_SECONDS), so a refusal
is a close code the page understands rather than a failed handshake. Frames the page sends
meanwhile wait for that check. While the channel layer is away (Redis restarting) the socket
stays open for up to CHAT_LAYER_OUTAGE_SECONDS; when the layer answers again the socket joins
its groups again and the page gets what a `sync` gives, since frames published meanwhile were lost.

Every frame gets an answer: a frame the server cannot take is one `error` frame, never a
dropped socket (past CHAT_MAX_MESSAGE_CHARS * 6 + 4096 characters, `frame_too_large`), except
a frame over daphne's 1 MiB message limit, on which daphne's websocket layer (autobahn) fails
the connection with close code 1009 before the consumer sees it (clients may see 1006).
Frames that reach the database (turns, stop, sync) are rate-limited per socket and per
user, and each re-reads the session in the same trip to the database (logged out, a
disabled account or a changed password: close 4401).
The consumer only parses frames, calls the generation service and forwards the
conversation group's frames; the reply itself lives in conversations.chat.replies.
"""

import asyncio
import hashlib
import logging
import time
from contextlib import asynccontextmanager
from functools import partial
from importlib import import_module
from types import SimpleNamespace

from asgiref.sync import async_to_sync
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user, get_user_model, user_logged_out
from django.db import DatabaseError
from django.dispatch import receiver
from django.utils.crypto import constant_time_compare

from conversations.access.permissions import CHAT, may_chat
from conversations.chat import replies
from conversations.chat.frames import path_frame
from conversations.chat.protocol import MAX_ID, Bucket, admit, parse
from conversations.delivery import durable
from conversations.delivery.groups import group_for, layer_health, send_to, user_group
from conversations.errors import AccessRevoked, ChatError, SessionEnded
from conversations.models import Conversation

log = logging.getLogger(__name__)


class ChatConsumer(AsyncJsonWebsocketConsumer):
    conversation_id = None
    session_group = user_group = None

    async def __call__(self, scope, receive, send):
        """Serve the socket; however it ends (a crash included), it stops counting as a watcher."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._leave()

    async def dispatch(self, message):
        """Call the message's handler, without Channels' extra trip to the database thread.

        Channels closes stale database connections before every message, in the one
        thread that all users' database work shares; every database call here goes
        through `database_sync_to_async`, which does that itself. Skipping the extra trip
        keeps streamed chunks from queueing behind other users' saves.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            log.warning("chat socket: no handler for a %r message", message.get("type"))
            return
        await handler(message)

    async def connect(self):
        """Accept at once, then check who asks (see the module's docstring) and join the socket's groups."""
        pk = self.scope["url_route"]["kwargs"]["pk"]
        if pk > MAX_ID or not _session_key(self.scope):  # no such conversation, or nobody logged in
            await self.close(code=4404)
            return
        self.bucket = Bucket(settings.CHAT_SOCKET_FRAMES_PER_SECOND, settings.CHAT_SOCKET_FRAMES_BURST)
        await self.accept()
        try:
            refused = await durable.call(_admit, self.scope, pk, within=settings.CHAT_DB_RETRY_SECONDS)
        except durable.UNREACHABLE:
            log.warning("chat socket closed: the database is not answering")
            await self.close(code=4503)
            return
        if refused:
            await self.close(code=refused)
            return
        self.session_group = _session_group(_session_key(self.scope))
        self.user_group = user_group(self.scope["user"].pk)
        try:
            await self._join_groups(pk)
        except Exception as exc:
            log.warning("chat socket closed: the channel layer failed (%s: %s)", type(exc).__name__, exc)
            await self.close(code=4503)
            return
        self.conversation_id = pk
        replies.watch(pk)
        for frame in await replies.catch_up(pk, self.channel_name):
            await self.send_json(frame)

    async def _join_groups(self, pk):
        for group in (self.session_group, self.user_group, group_for(pk)):
            await self.channel_layer.group_add(group, self.channel_name)

    async def _leave(self):
        if self.conversation_id is None:
            return
        pk, self.conversation_id = self.conversation_id, None
        replies.unwatch(pk)
        for group in (group_for(pk), self.session_group, self.user_group):
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:
                pass

    async def disconnect(self, code):
        await self._leave()

    async def receive(self, text_data=None, bytes_data=None):
        if self.conversation_id is None:  # sent before its check ended, and refused: the socket is closing
            return
        async with self._errors_as_frames():
            command = parse(text_data, bytes_data)
            admit(self.bucket, self.scope["user"].pk)
            await self._handle(command)

    @asynccontextmanager
    async def _errors_as_frames(self):
        """What goes wrong handling a frame is one error frame; the socket stays open (unless the session ended)."""
        try:
            yield
        except ChatError as exc:
            await self.send_json(exc.frame())
            if isinstance(exc, SessionEnded):
                await self.close(code=exc.close_code)
        except DatabaseError as exc:
            log.warning("chat frame refused: the database failed (%s)", durable.first_line(exc))
            await self.send_json(
                ChatError("database_unavailable", "The database is not answering; try again in a moment.").frame()
            )
        except Exception:
            log.exception("chat frame failed")
            await self.send_json(
                ChatError("internal_error", "The server failed to handle that; it has been logged.").frame()
            )

    async def _handle(self, command):
        """Every frame's trip to the database first re-reads the session (`guard`), in the same trip."""
        user = self.scope["user"]
        guard = partial(_check_session, self.scope)
        if command.kind == "stop":
            await replies.stop(user, self.conversation_id, guard)
        elif command.kind == "sync":
            await self._send_branch(guard)
        else:
            await replies.begin(user, self.conversation_id, command.turn, guard)

    async def _send_branch(self, guard):
        """The active branch again, then where the replies being written are."""
        frame = await durable.call(
            _path_of, self.scope["user"], self.conversation_id, guard, within=settings.CHAT_DB_RETRY_SECONDS
        )
        await self.send_json(frame)
        for frame in await replies.catch_up(self.conversation_id, self.channel_name):
            await self.send_json(frame)

    # --- riding out a channel-layer outage ---------------------------------------------

    @property
    def channel_receive(self):
        return self._receive_riding_out

    @channel_receive.setter
    def channel_receive(self, receive):
        """Channels' AsyncConsumer sets the layer's receive here; its loop calls `_receive_riding_out` instead."""
        self._layer_receive = receive

    async def _receive_riding_out(self):
        """The layer's next message. A receive that fails (Redis away) is tried again with a growing pause for
        up to CHAT_LAYER_OUTAGE_SECONDS (then raised: the socket closes, and the page reconnects); once the layer
        answers, the socket joins its groups again (a restarted Redis has none) and gets `layer.recovered`."""
        deadline, pause = None, 0.1
        while True:
            try:
                if deadline is not None and self.conversation_id is not None:
                    await self._join_groups(self.conversation_id)
                    layer_health.answered()
                    return {"type": "layer.recovered"}
                return await self._layer_receive()
            except Exception as exc:
                layer_health.failed(exc)
                now = time.monotonic()
                deadline = deadline or now + settings.CHAT_LAYER_OUTAGE_SECONDS
                if now + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def layer_recovered(self, event):
        """The channel layer answers again: what was published while it was away never came, so catch up."""
        async with self._errors_as_frames():
            await self._send_branch(partial(_check_session, self.scope))

    # --- from the channel layer ----------------------------------------------------

    async def chat_frame(self, event):
        await self.send_json(event["frame"])

    async def reply_roll_call(self, event):
        """A reply with no watcher in its own process asks whether any page still shows it."""
        await send_to(event["reply_to"], {"type": "reply.watching", "conversation_id": self.conversation_id})

    async def session_end(self, event):
        await self.send_json(SessionEnded().frame())
        await self.close(code=4401)

    async def access_check(self, event):
        """The user's access changed (access/permissions.py): read the account again; close if it may no longer chat."""
        try:
            await durable.call(_check_session, self.scope, within=settings.CHAT_DB_RETRY_SECONDS)
        except SessionEnded as exc:
            await self.send_json(exc.frame())
            await self.close(code=exc.close_code)
        except durable.UNREACHABLE:
            log.warning("access check of a socket skipped: the database is not answering (its next frame checks)")


class RefusingConsumer(AsyncWebsocketConsumer):
    """Any other websocket path: the handshake is refused (HTTP 403), as for a foreign origin."""

    async def connect(self):
        await self.close()


def _session_key(scope):
    return scope.get("cookies", {}).get(settings.SESSION_COOKIE_NAME, "")


def _session_group(key):
    """A channel-layer group per login session, so that logging out closes that session's sockets."""
    return "session-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def _admit(scope, pk):
    """Resolve the socket's user from its session (as Django does for a request: the session's hash must
    match the account's), then its refusal (`_refusal`), in one trip to the database."""
    scope["user"]._wrapped = get_user(SimpleNamespace(session=scope["session"]))
    return _refusal(scope["user"], pk)


def _refusal(user, pk):
    """The close code refusing this socket, or None: 4404 not its conversation (or logged out), 4403 an
    account that may not chat."""
    if not user.is_authenticated:
        return 4404
    if not may_chat(user):
        return 4403
    return None if Conversation.objects.for_user(user).filter(pk=pk).exists() else 4404


def _path_of(user, conversation_id, guard):
    guard()
    conversation = Conversation.objects.for_user(user).filter(pk=conversation_id).first()
    if conversation is None:
        raise ChatError("unknown_conversation", "This conversation does not exist (it may have been deleted).")
    return path_frame(conversation)


def _check_session(scope):
    """The socket's session, read again from the store: still there, same user, active, same password
    (else SessionEnded), and the account may still chat (else AccessRevoked). True when all hold."""
    user = scope["user"]
    key = _session_key(scope)
    if not key or not user.is_authenticated:
        raise SessionEnded()
    data = import_module(settings.SESSION_ENGINE).SessionStore(key).load()
    if data.get(SESSION_KEY) != str(user.pk):
        raise SessionEnded()
    current = get_user_model().objects.filter(pk=user.pk, is_active=True).first()
    if current is None or not constant_time_compare(data.get(HASH_SESSION_KEY, ""), current.get_session_auth_hash()):
        raise SessionEnded()
    if not current.has_perm(CHAT):
        raise AccessRevoked()
    return True


@receiver(user_logged_out)
def _close_sockets_of_session(sender, request, **kwargs):
    """Logging out closes the sockets opened with that session, in every process (best effort)."""

    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME, "") if request is not None else ""
    if not key:
        return
    try:
        async_to_sync(get_channel_layer().group_send)(_session_group(key), {"type": "session.end"})
    except Exception as exc:
        log.warning("logout: could not tell the session's sockets (%s)", exc)
