"""No cold first reply, live: a daphne that starts loads the default model (the built-in one, the real
transformers path) with no chat request, and the admin's runtime column says so; a daphne started with
MODELHUB_PRELOAD=0 beside it leaves it to the first reply. A daphne started on a database that is not
migrated yet still serves, and says why no model was loaded.
"""

import re
import time
import urllib.request

import pytest

from tests.live import SHELL_PRELUDE, Site, SqliteDatabase

pytestmark = [pytest.mark.slow, pytest.mark.live]

SETUP = (
    SHELL_PRELUDE
    + """
import io
from django.core.management import call_command
call_command("ensure_builtin_model", stdout=io.StringIO())
User.objects.create_superuser("staff", password="live-pass-123")
print(json.dumps({"cookie": session_for("staff")}))
"""
)


def get(server, path, cookie=None):
    request = urllib.request.Request(server.url + path, headers={"Cookie": f"sessionid={cookie}"} if cookie else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read().decode()


def runtime(server, cookie):
    """The admin's runtime column for the built-in model, as that server process sees it."""
    status, html = get(server, "/admin/modelhub/modelspec/", cookie)
    assert status == 200
    return re.search(r'class="field-runtime">([^<]*)<', html)[1]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout} s")
        time.sleep(0.2)
    return value


def test_a_server_loads_the_default_model_at_start_without_any_chat_request(tmp_path):
    site = Site(tmp_path)
    try:
        cookie = site.setup(SETUP)["cookie"]
        preloading, cold = site.server(), site.server(MODELHUB_PRELOAD=0)

        seen = [runtime(preloading, cookie)]
        assert seen[0].startswith(("loading (", "loaded on cpu")), seen[0]
        wait_for(
            lambda: seen.append(runtime(preloading, cookie)) or seen[-1].startswith("loaded on cpu"),
            120,
            f"the built-in model is not loaded: {seen[-1]!r}",
        )
        assert runtime(cold, cookie) == "not loaded"
        assert site.rows("SELECT count(*) FROM conversations_message") == [(0,)]
        assert "loading at start: chitchat" in preloading.log
        assert "loading at start" not in cold.log
        assert "Traceback" not in preloading.log + cold.log
    finally:
        site.close()


def test_a_server_on_a_database_not_migrated_yet_serves_and_says_why_nothing_was_loaded(tmp_path):
    site = Site(tmp_path, database=SqliteDatabase(tmp_path, migrated=False))  # not migrated yet
    try:
        server = site.server()
        assert get(server, "/login/")[0] == 200
        wait_for(lambda: "no model is loaded at start" in server.log, 30, "no word of the failed preload")
        assert "each loads on its first use: the database failed (OperationalError: no such table" in server.log
        assert server.process.poll() is None
        assert "Traceback" not in server.log
    finally:
        site.close()
