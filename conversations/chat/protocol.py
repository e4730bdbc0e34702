"""Client frames of the chat socket, parsed and checked before anything else looks at them.

`parse(text_data, bytes_data)` returns a `Command`, or raises ChatError with the code the
page shows; it never raises anything else, whatever arrives (deep nesting, lone
surrogates, NUL, numbers past any range, the wrong types). See consumers.py for the frames.
"""

import json
import time
from dataclasses import dataclass, field

from django.conf import settings

from conversations.chat.turns import Turn
from conversations.errors import ChatError

TURNS = ("send", "edit", "regenerate", "continue", "compare", "alternative")
MAX_INDEX = 10**6  # more tokens than any reply has
OTHERS = ("stop", "sync")
MAX_ID = 2**63 - 1  # the database's bigint


@dataclass
class Command:
    kind: str  # a turn kind, "stop" or "sync"
    turn: Turn | None = None
    extra: dict = field(default_factory=dict)


def max_frame_chars():
    """The longest frame read at all: a message at the limit, escaped, with room for options."""
    return settings.CHAT_MAX_MESSAGE_CHARS * 6 + 4096


def parse(text_data, bytes_data=None):
    if text_data is None:
        raise ChatError("bad_frame", "Frames must be JSON text, not binary.")
    if len(text_data) > max_frame_chars():
        raise ChatError(
            "frame_too_large",
            f"The frame has {len(text_data)} characters; the most a frame may have is {max_frame_chars()}.",
        )
    try:
        frame = json.loads(text_data)
    except (ValueError, RecursionError):
        raise ChatError("bad_json", "The frame is not valid JSON.") from None
    if not isinstance(frame, dict):
        raise ChatError("bad_frame", "The frame must be a JSON object with a 'type'.")
    kind = frame.get("type")
    if kind in OTHERS:
        return Command(kind)
    if kind not in TURNS:
        raise ChatError(
            "unknown_type", f"Unknown frame type {_shown(kind)}; expected one of {', '.join(TURNS + OTHERS)}."
        )
    options = frame.get("options") or {}
    if not isinstance(options, dict):
        raise ChatError("invalid_options", "'options' must be a JSON object.")
    content = _content(frame) if kind in ("send", "edit", "compare") else ""
    message_id = _message_id(frame) if kind in ("edit", "regenerate", "continue", "alternative") else None
    models = frame.get("models") if kind == "compare" and isinstance(frame.get("models"), list) else []
    at = (_index(frame, "token"), _index(frame, "choice")) if kind == "alternative" else None
    return Command(kind, Turn(kind, content, message_id, options, models, at=at))


def _index(frame, name):
    value = frame.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_INDEX:
        raise ChatError(
            "unknown_alternative", f"The frame needs the integer {name!r} of the alternative to branch from."
        )
    return value


def _shown(value):
    """A value from the client, short and printable, for an error message."""
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text.encode("ascii", "backslashreplace").decode()[:40]


def _message_id(frame):
    message_id = frame.get("message_id")
    if not isinstance(message_id, int) or isinstance(message_id, bool) or not 0 < message_id <= MAX_ID:
        raise ChatError("unknown_message", "The frame needs the integer 'message_id' of the message to act on.")
    return message_id


def _content(frame):
    content = frame.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ChatError("empty_message", "The message is empty.")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(content) > limit:
        raise ChatError("message_too_long", f"The message has {len(content)} characters; the limit is {limit}.")
    problem = unstorable(content)
    if problem:
        raise ChatError("invalid_text", f"The message contains {problem}.")
    return content


def unstorable(text):
    """What in `text` no database can store, or "": NUL (PostgreSQL refuses it), a lone UTF-16 surrogate
    (it has no UTF-8 form). The socket's frames and the API's bodies are checked by this one rule."""
    if "\x00" in text:
        return "a NUL character (U+0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone UTF-16 surrogate (broken Unicode)"
    return ""


class Bucket:
    """A token bucket: `rate` frames a second on average, `burst` at once; `take()` is False past that."""

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate, self.burst = rate, burst
        self.clock = clock
        self.tokens, self.at = float(burst), self.clock()

    def take(self):
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


_user_buckets = {}  # user id -> Bucket, shared by the user's sockets in this process (event loop only)


def admit(socket_bucket, user_id):
    """Refuse a frame that would reach the database past the socket's or the user's rate (CHAT_FRAMES_*)."""
    user_bucket = _user_buckets.get(user_id)
    if user_bucket is None:
        if len(_user_buckets) > 10000:
            _user_buckets.clear()
        user_bucket = _user_buckets[user_id] = Bucket(
            settings.CHAT_USER_FRAMES_PER_SECOND, settings.CHAT_USER_FRAMES_BURST
        )
    if not (socket_bucket.take() and user_bucket.take()):
        raise ChatError("rate_limited", "Too many requests at once; wait a moment and try again.")
