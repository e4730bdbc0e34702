"""Many API calls at once on the deployed setup leave PostgreSQL as many connections as the pool allows.

Under ASGI every request runs its database work in a thread of its own; connections kept per thread
(CONN_MAX_AGE) were never reused nor closed, and vLLM's benchmark client at 16 calls at once ran
PostgreSQL out of connections ("too many clients", every call a 500). chatsite/settings.py gives each
process psycopg's pool instead: here a pool of 3 serves 48 calls, 16 at a time, through a real daphne.
"""

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.live import SHELL_PRELUDE, RedisServer, Site
from tests.postgres import PostgresDatabase

pytestmark = [pytest.mark.slow, pytest.mark.live]

SETUP = (
    SHELL_PRELUDE
    + """
import io
from django.core.management import call_command
from conversations.models import ApiKey
call_command("ensure_builtin_model", stdout=io.StringIO())
user = User.objects.create_user("batch", password="live-pass-123")
key, raw = ApiKey.objects.issue(user, "batch job")
key.replies_at_once = 16
key.save(update_fields=["replies_at_once"])
print(json.dumps({"key": raw}))
"""
)
POOL = 3


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("connections")
    site = Site(folder, database=PostgresDatabase(), redis=RedisServer(folder), DATABASE_POOL_SIZE=POOL)
    try:
        site.key = site.setup(SETUP)["key"]
        site.web = site.server()
        yield site
        assert "Traceback" not in site.web.log
    finally:
        site.close()


def connections(site):
    """The server's connections to the site's database (this test's own one left out)."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    return site.rows(query)[0][0]


def test_48_calls_16_at_a_time_all_answer_on_a_pool_of_3_connections(site):
    client = openai.OpenAI(base_url=site.web.url + "/v1", api_key=site.key, max_retries=0, timeout=120)

    def call(n):
        reply = client.chat.completions.create(
            model="chitchat", messages=[{"role": "user", "content": f"question {n}"}], max_tokens=6, temperature=0
        )
        return reply.choices[0].finish_reason

    with ThreadPoolExecutor(16) as calls:
        finished = list(calls.map(call, range(48)))
    assert len(finished) == 48 and set(finished) <= {"stop", "length"}
    assert 1 <= connections(site) <= POOL
    kept = site.rows("SELECT count(*) FROM conversations_message WHERE role = 'assistant' AND status = 'complete'")
    assert kept[0][0] == 48
