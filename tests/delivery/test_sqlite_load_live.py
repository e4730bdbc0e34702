"""The embedded default under a little load, live: one daphne on SQLite, 16 API calls at once (4 users, 4 calls
each: the reply cap), half kept as conversations and half not. Every call is answered, and no write ever
met "database is locked": each transaction takes SQLite's write lock when it begins (IMMEDIATE), so two of
them never deadlock on the upgrade from reading to writing, which SQLite answers at once with that error
instead of waiting out the busy timeout."""

import concurrent.futures
import json
import urllib.request

import pytest

from tests.live import SHELL_PRELUDE, Site

pytestmark = [pytest.mark.slow, pytest.mark.live]

USERS = 4
CALLS_EACH = 4

SETUP = (
    SHELL_PRELUDE
    + f"""
from conversations.models import ApiKey
from modelhub.models import ModelSpec
ModelSpec.objects.create(name="echo", backend="scripted", source="echo delay=0.01", is_default=True)
keys = []
for n in range({USERS}):
    user = User.objects.create_user(f"user{{n}}", password="live-pass-123")
    keys += [ApiKey.objects.issue(user, "kept")[1], ApiKey.objects.issue(user, "unkept", keep_calls=False)[1]]
print(json.dumps(keys))
"""
)


def call(server, key, n):
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": f"question {n}"}]}).encode()
    request = urllib.request.Request(
        server.url + "/v1/chat/completions",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_sixteen_calls_at_once_are_all_answered_and_no_write_meets_a_locked_database(tmp_path):
    site = Site(tmp_path, CHAT_MAX_REPLIES_PER_USER=CALLS_EACH)
    try:
        keys = site.setup(SETUP)
        server = site.server()
        calls = [(keys[2 * user + n % 2], n) for user in range(USERS) for n in range(CALLS_EACH)]
        for _ in range(2):  # twice: the second round meets warm connections and the first round's rows
            with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
                answers = list(pool.map(lambda args: call(server, *args), calls))
            assert [status for status, _ in answers] == [200] * len(calls), answers
            assert all(body["choices"][0]["message"]["content"] for _, body in answers)
        assert "database is locked" not in server.log
        assert site.rows(
            "SELECT count(*) FROM conversations_message WHERE role = 'assistant' AND status = 'complete'"
        ) == [(USERS * CALLS_EACH,)]  # the kept half, both rounds
    finally:
        site.close()
