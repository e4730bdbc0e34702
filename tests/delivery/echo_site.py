"""A live site whose model echoes the user's words, 20 a second (a registered scripted model), so a
reply's whole text is known in advance and its length is set by the question: its setup, the deployed
machinery's timings shortened so a test sees them act, and reading a reply's row as it is written.

    site = Site(tmp_path, database=PostgresDatabase(), redis=RedisServer(tmp_path), **FAST)
    info = site.setup(SETUP)   # {"cookie": the owner's session, "conversations": [six ids]}
"""

import json
import time

from tests.live import SHELL_PRELUDE, frames_until

SETUP = (
    SHELL_PRELUDE
    + """
from modelhub.models import ModelSpec
from conversations.models import Conversation
owner = User.objects.create_user("owner", password="live-pass-123")
ModelSpec.objects.create(name="echo", backend="scripted", source="echo delay=0.05", is_default=True)
conversations = [Conversation.objects.create(owner=owner).pk for _ in range(6)]
print(json.dumps({"cookie": session_for("owner"), "conversations": conversations}))
"""
)

FAST = {  # timings of the deployed machinery, shortened so the tests see them act
    "CHAT_HEARTBEAT_SECONDS": 0.5,
    "CHAT_WRITER_TIMEOUT_SECONDS": 3,
    "CHAT_FLUSH_SECONDS": 0.3,
    "CHAT_ORPHAN_GRACE_SECONDS": 30,
}


def words(n, tag="w"):
    return " ".join(f"{tag}{i}" for i in range(n))


def reply_row(site, message_id):
    status, content = site.rows("SELECT status, content FROM conversations_message WHERE id = %s", (message_id,))[0]
    return status, content


def wait_for_row(site, message_id, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        row = reply_row(site, message_id)
        if predicate(*row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"reply {message_id} is {row[0]} with {len(row[1])} characters after {timeout} s")
        time.sleep(0.2)


async def ask(ws, content):
    """Send a question; returns (frames up to its reply's first chunk, the reply's id).

    Frames of earlier replies still on their way are read past: the reply is the streaming
    message announced right after this question's own message."""
    await ws.send(json.dumps({"type": "send", "content": content}))
    frames = await frames_until(
        ws, lambda f: f["type"] == "message" and "message-user" in f["html"] and f'data-raw="{content}"' in f["html"]
    )
    frames += await frames_until(ws, "message")
    reply = frames[-1]["message_id"]
    frames += await frames_until(ws, lambda f: f["type"] == "chunk" and f["message_id"] == reply)
    return frames, reply
