"""The chat websocket: one socket per open conversation page.

    ws/conversations/<id>/   refused for anonymous users and for anyone but the owner

Client frames (JSON):
    {"type": "send", "content": "..."[, "options": {...}]}
                                           a user message (at most CHAT_MAX_MESSAGE_CHARS), with
                                           optional generation options (temperature, top_p, top_k,
                                           max_new_tokens, repetition_penalty, seed, ignore_eos)
    {"type": "edit", "message_id", "content"[, "options"]}   a new version of a question (new branch)
    {"type": "regenerate", "message_id"[, "options"]}       another answer (a sibling of that one)
    {"type": "continue", "message_id"[, "options"]}         more of an answer cut by the token limit
    {"type": "compare", "content", "models": [key, key]}    one question to two model choices at once
    {"type": "stop"}                       stop the reply being written
Server frames (JSON):
    {"type": "message", "message_id", "status", "html"[, "offset"]}  a message, rendered
    {"type": "chunk", "message_id", "offset", "text"}  text to append at `offset`
    {"type": "done", "message_id", "status", "html"}   the reply's final rendering
    {"type": "title", "title"}                         the conversation's (new) title
    {"type": "path", "html"}                           the whole active branch, after a branch change
    {"type": "error", "code", "message"}               a refusal; the socket stays open

The consumer only parses frames, calls the generation service and forwards the
conversation group's frames; the reply itself lives in conversations.replies.
"""

import json

from channels.db import database_sync_to_async
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from conversations import replies
from conversations.models import Conversation
from conversations.replies import ChatError, Turn

TURNS = ("send", "edit", "regenerate", "continue", "compare")


class ChatConsumer(AsyncJsonWebsocketConsumer):
    conversation_id = None

    async def dispatch(self, message):
        """Call the message's handler, without Channels' extra trip to the database thread.

        Channels closes stale database connections before every message, in the one
        thread that all users' database work shares; every database call here goes
        through `database_sync_to_async`, which does that itself. Skipping the extra trip
        keeps streamed chunks from queueing behind other users' saves.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def connect(self):
        user = self.scope["user"]
        pk = self.scope["url_route"]["kwargs"]["pk"]
        owned = await database_sync_to_async(Conversation.objects.for_user(user).filter(pk=pk).exists)()
        if not owned:
            await self.close(code=4404)
            return
        self.conversation_id = pk
        await self.channel_layer.group_add(replies.group_for(pk), self.channel_name)
        replies.watch(pk)
        await self.accept()
        frame = await database_sync_to_async(replies.snapshot)(pk)
        if frame is not None:
            await self.send_json(frame)

    async def disconnect(self, code):
        if self.conversation_id is not None:
            await self.channel_layer.group_discard(replies.group_for(self.conversation_id), self.channel_name)
            replies.unwatch(self.conversation_id)

    async def receive(self, text_data=None, bytes_data=None):
        try:
            await self._handle(_parse(text_data))
        except ChatError as exc:
            await self.send_json(exc.frame())

    async def _handle(self, frame):
        kind = frame.get("type")
        user = self.scope["user"]
        if kind == "stop":
            await replies.stop(user, self.conversation_id)
        elif kind in TURNS:
            options = frame.get("options") or {}
            if not isinstance(options, dict):
                raise ChatError("invalid_options", "'options' must be a JSON object.")
            content = _content(frame) if kind in ("send", "edit", "compare") else ""
            message_id = _message_id(frame) if kind in ("edit", "regenerate", "continue") else None
            models = frame.get("models") if kind == "compare" and isinstance(frame.get("models"), list) else []
            await replies.begin(user, self.conversation_id, Turn(kind, content, message_id, options, models))
        else:
            raise ChatError("unknown_type", f"Unknown frame type {kind!r}; expected one of {', '.join(TURNS)}, stop.")

    async def chat_frame(self, event):
        await self.send_json(event["frame"])

    async def reply_stop(self, event):
        replies.cancel_local(event["message_id"])


def _parse(text_data):
    if text_data is None:
        raise ChatError("bad_frame", "Frames must be JSON text, not binary.")
    try:
        frame = json.loads(text_data)
    except ValueError:
        raise ChatError("bad_json", "The frame is not valid JSON.") from None
    if not isinstance(frame, dict):
        raise ChatError("bad_frame", "The frame must be a JSON object with a 'type'.")
    return frame


def _message_id(frame):
    message_id = frame.get("message_id")
    if not isinstance(message_id, int) or isinstance(message_id, bool):
        raise ChatError("unknown_message", "The frame needs the integer 'message_id' of the message to act on.")
    return message_id


def _content(frame):
    content = frame.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ChatError("empty_message", "The message is empty.")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(content) > limit:
        raise ChatError("message_too_long", f"The message has {len(content)} characters; the limit is {limit}.")
    return content
