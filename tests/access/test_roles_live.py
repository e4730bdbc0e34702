"""Access taken away in the deployed setup, live: two daphne processes on PostgreSQL and a Redis
channel layer, a user with a socket open on each, held idle past redis-py's 5 s socket timeout; a third
process (manage.py shell, as an admin's request would) removes the user's role, and both sockets are
closed at once (4403) while the next page and API call are refused; or it changes the user's password,
and the sockets of the sessions that ended are closed (4401) before the user, logged in again, chats."""

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
from conversations.models import ApiKey, Conversation
from modelhub.models import ModelSpec
owner = User.objects.create_user("owner", password="live-pass-123")
kept = User.objects.create_user("kept", password="live-pass-123")
ModelSpec.objects.create(name="echo", backend="scripted", source="echo delay=0.05", is_default=True)
print(json.dumps({"cookie": session_for("owner"), "kept_cookie": session_for("kept"),
                  "conversations": [Conversation.objects.create(owner=owner).pk for _ in range(2)],
                  "kept_conversation": Conversation.objects.create(owner=kept).pk,
                  "key": ApiKey.objects.issue(owner, "live")[1]}))
"""
)

REMOVE_ROLE = """
from django.contrib.auth.models import Group, User
User.objects.get(username="owner").groups.remove(Group.objects.get(name="user"))
"""


CHANGE_PASSWORD = """
from django.contrib.auth.models import User
user = User.objects.get(username="owner")
user.set_password("changed-pass-456")
user.save()
"""

NEW_SESSION = (
    SHELL_PRELUDE
    + """
print(json.dumps(session_for("owner")))
"""
)


def status_of(url, cookie=None, key=None):
    request = urllib.request.Request(url)
    if cookie:
        request.add_header("Cookie", f"sessionid={cookie}")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path, database=PostgresDatabase(), redis=RedisServer(tmp_path))
    site.info = site.setup(SETUP)
    yield site
    site.close()


def test_removing_a_users_role_closes_their_sockets_in_every_process_and_refuses_what_comes_next(site):
    first, second = site.server(), site.server()
    info = site.info
    assert status_of(first.url + "/", info["cookie"]) == 200

    async def scenario():
        sockets = [
            await open_socket(server, info["cookie"], pk) for server, pk in zip((first, second), info["conversations"])
        ]
        kept = await open_socket(second, info["kept_cookie"], info["kept_conversation"])
        await asyncio.sleep(6)  # idle past redis-py's socket timeout: the user's group must still hear
        await asyncio.to_thread(site.manage, "shell", "-c", REMOVE_ROLE)
        for ws in sockets:
            frames = await frames_until(ws, "error", timeout=10)
            assert frames[-1]["code"] == "access_revoked"
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 4403
        await kept.send(json.dumps({"type": "sync"}))
        assert (await frames_until(kept, "path", timeout=10))[-1]["type"] == "path"  # another user: untouched
        await kept.close()

    asyncio.run(scenario())
    assert status_of(second.url + "/", info["cookie"]) == 403
    assert status_of(first.url + "/v1/models", key=info["key"]) == 403
    assert status_of(first.url + "/privacy/", info["cookie"]) == 200  # their data is still theirs to see


def test_a_password_changed_elsewhere_closes_the_sockets_of_the_sessions_it_ended(site):
    first, second = site.server(), site.server()
    info = site.info

    async def scenario():
        tab_a = await open_socket(first, info["cookie"], info["conversations"][0])
        await asyncio.sleep(6)  # idle past redis-py's socket timeout
        await asyncio.to_thread(site.manage, "shell", "-c", CHANGE_PASSWORD)
        frames = await frames_until(tab_a, "error", timeout=10)
        assert [frame["type"] for frame in frames] == ["error"] and frames[0]["code"] == "session_ended"
        await asyncio.wait_for(tab_a.wait_closed(), 10)
        assert tab_a.close_code == 4401
        printed = await asyncio.to_thread(site.manage, "shell", "-v0", "-c", NEW_SESSION)
        cookie = json.loads(printed.stdout.strip().splitlines()[-1])
        tab_b = await open_socket(second, cookie, info["conversations"][0])  # logged in again, chatting
        await tab_b.send(json.dumps({"type": "send", "content": "hello again"}))
        assert (await frames_until(tab_b, "done", timeout=30))[-1]["status"] == "complete"
        await tab_b.close()

    asyncio.run(scenario())
