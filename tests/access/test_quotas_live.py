"""Quotas across processes, live: two daphne processes on one PostgreSQL database and a Redis channel
layer. A user limited to 3 replies a minute sends 6 questions at once, 3 to each process, over 6 sockets:
exactly 3 are answered and 3 refused (the check and the save share a transaction with the user's row
locked), and one more through the API of either process is refused with 429."""

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from tests.live import SHELL_PRELUDE, RedisServer, Site, frames_until, open_socket
from tests.postgres import PostgresDatabase

pytestmark = [pytest.mark.slow, pytest.mark.live]

SETUP = (
    SHELL_PRELUDE
    + """
from conversations.models import ApiKey, Conversation, Quota
from modelhub.models import ModelSpec
owner = User.objects.create_user("owner", password="live-pass-123")
Quota.objects.create(user=owner, replies_per_minute=3)
ModelSpec.objects.create(name="echo", backend="scripted", source="echo delay=0.05", is_default=True)
print(json.dumps({"cookie": session_for("owner"),
                  "conversations": [Conversation.objects.create(owner=owner).pk for _ in range(6)],
                  "key": ApiKey.objects.issue(owner, "live", keep_calls=False)[1]}))
"""
)


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path, database=PostgresDatabase(), redis=RedisServer(tmp_path), CHAT_MAX_REPLIES_PER_USER=10)
    site.info = site.setup(SETUP)
    yield site
    site.close()


def api_status(server, key):
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(
        server.url + "/v1/chat/completions",
        body,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]["code"]


def test_replies_a_minute_hold_across_two_processes_sent_at_once(site):
    servers = [site.server(), site.server()]
    info = site.info

    async def scenario():
        sockets = [
            await open_socket(servers[index % 2], info["cookie"], pk) for index, pk in enumerate(info["conversations"])
        ]
        await asyncio.gather(
            *(ws.send(json.dumps({"type": "send", "content": f"question {index}"})) for index, ws in enumerate(sockets))
        )
        outcomes = []
        for ws in sockets:
            frames = await frames_until(ws, lambda f: f["type"] in ("done", "error"), timeout=30)
            outcomes.append(frames[-1]["type"] if frames[-1]["type"] == "done" else frames[-1]["code"])
            await ws.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert sorted(outcomes) == ["done"] * 3 + ["quota_exceeded"] * 3
    assert site.rows("SELECT count(*) FROM conversations_message WHERE role = 'assistant'")[0][0] == 3
    assert site.rows("SELECT count(*) FROM conversations_message WHERE role = 'user'")[0][0] == 3  # none saved
    for server in servers:
        assert api_status(server, info["key"]) == (429, "quota_exceeded")
    assert site.rows("SELECT count(*) FROM conversations_unkeptcallusage")[0][0] == 0
