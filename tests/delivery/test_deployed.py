"""The deployed setup, live: daphne processes on one PostgreSQL database and a Redis channel layer,
over real sockets held open past every timeout in the stack (redis-py's socket timeout, daphne's
ping interval), with processes started, stopped (SIGTERM) and killed (SIGKILL), Redis restarted
and PostgreSQL unreachable mid-reply.

Each test has its own PostgreSQL database and its own redis-server on its own port (tests/live.py);
the model is a registered scripted one that echoes the user's words, 20 a second, so a reply's
whole text is known in advance and its length is set by the question.
"""

import asyncio
import json
import time

import pytest
import websockets

from tests.delivery.echo_site import FAST, SETUP, ask, reply_row, wait_for_row, words
from tests.live import SHELL_PRELUDE, RedisServer, Site, TcpProxy, frames_until, open_socket, text_of
from tests.postgres import PostgresDatabase

pytestmark = [pytest.mark.slow, pytest.mark.live]


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path, database=PostgresDatabase(), redis=RedisServer(tmp_path), **FAST)
    site.info = site.setup(SETUP)
    yield site
    site.close()


async def test_an_idle_socket_on_redis_stays_open_and_still_receives_the_next_reply(site):
    server = site.server()
    ws = await open_socket(server, site.info["cookie"], site.info["conversations"][0])
    with pytest.raises(asyncio.TimeoutError):  # 35 s of silence: past redis-py's 5 s read timeout and daphne's pings
        await asyncio.wait_for(ws.recv(), 35)

    await ws.send(json.dumps({"type": "send", "content": "still here"}))
    frames = await frames_until(ws, "done")
    assert frames[-1]["status"] == "complete"
    assert text_of(frames, frames[-1]["message_id"]) == "still here"
    assert "Traceback" not in server.log
    await ws.close()


async def test_a_reply_reaches_a_watcher_on_another_process_which_can_also_stop_it(site):
    a, b = site.server(), site.server()
    cookie, conversation = site.info["cookie"], site.info["conversations"][0]
    on_a = await open_socket(a, cookie, conversation)
    on_b = await open_socket(b, cookie, conversation)
    await on_a.send(json.dumps({"type": "send", "content": words(12)}))
    frames = await frames_until(on_b, "done")
    assert text_of(frames, frames[-1]["message_id"]) == words(12)
    assert frames[-1]["status"] == "complete"

    _, reply = await ask(on_a, words(400, "x"))  # written by process A, stopped from process B
    await on_b.send(json.dumps({"type": "stop"}))
    done = (await frames_until(on_b, "done"))[-1]
    assert done["message_id"] == reply and done["status"] == "stopped"
    status, content = wait_for_row(site, reply, lambda status, _: status != "streaming")
    assert status == "stopped" and words(400, "x").startswith(content) and 0 < len(content) < len(words(400, "x"))
    for ws in (on_a, on_b):
        await ws.close()


async def test_a_reply_watched_only_from_another_process_is_not_taken_for_an_orphan(site):
    a, b = site.server(CHAT_ORPHAN_GRACE_SECONDS=0.5), site.server(CHAT_ORPHAN_GRACE_SECONDS=0.5)
    cookie, conversation = site.info["cookie"], site.info["conversations"][0]
    on_a = await open_socket(a, cookie, conversation)
    on_b = await open_socket(b, cookie, conversation)
    _, reply = await ask(on_a, words(60))
    await on_a.close()  # no page of process A shows it any more; the one on B still does

    frames = await frames_until(on_b, "done", timeout=30)
    assert frames[-1]["status"] == "complete"
    assert reply_row(site, reply) == ("complete", words(60))

    _, reply = await ask(on_b, words(200))
    await on_b.close()  # now nobody watches anywhere: interrupted after the grace period
    status, content = wait_for_row(site, reply, lambda status, _: status != "streaming", timeout=10)
    assert status == "interrupted" and 0 < len(content) < len(words(200))


async def test_starting_stopping_and_killing_another_process_never_changes_a_live_reply(site):
    a = site.server()
    ws = await open_socket(a, site.info["cookie"], site.info["conversations"][0])
    _, reply = await ask(ws, words(160))  # 8 s of writing on process A

    b = site.server()
    await asyncio.to_thread(_get, b.url + "/login/")  # B serves its first request: its start-up recovery runs
    assert reply_row(site, reply)[0] == "streaming"
    assert b.stop() == 0
    c = site.server()
    await asyncio.to_thread(_get, c.url + "/login/")
    c.kill()
    assert reply_row(site, reply)[0] == "streaming"

    frames = await frames_until(ws, "done")
    assert frames[-1]["status"] == "complete"
    assert reply_row(site, reply) == ("complete", words(160))
    await ws.close()


async def test_a_killed_writers_replies_are_interrupted_with_the_text_last_flushed(site):
    a, b = site.server(), site.server()
    cookie, conversation = site.info["cookie"], site.info["conversations"][0]
    on_a = await open_socket(a, cookie, conversation)
    on_b = await open_socket(b, cookie, conversation)
    _, reply = await ask(on_a, words(400))
    await frames_until(on_b, lambda f: f["type"] == "chunk" and f["offset"] > 100)
    await asyncio.sleep(1)  # a few flushes
    a.kill()

    done = (await frames_until(on_b, "done", timeout=15))[-1]  # B's heartbeat notices and tells its pages
    assert done["message_id"] == reply and done["status"] == "interrupted"
    status, content = reply_row(site, reply)
    assert status == "interrupted"
    assert len(content) > 100 and words(400).startswith(content)
    assert "Traceback" not in b.log
    await on_b.close()


async def test_sigterm_saves_the_text_of_every_reply_being_written(site):
    a = site.server()
    cookie, conversations = site.info["cookie"], site.info["conversations"]
    sockets, replies = [], []
    for conversation in conversations[:3]:
        ws = await open_socket(a, cookie, conversation)
        replies.append((await ask(ws, words(400)))[1])
        sockets.append(ws)
    await asyncio.sleep(0.6)

    started = time.monotonic()
    assert await asyncio.to_thread(a.stop) == 0
    assert time.monotonic() - started < 15

    for reply in replies:
        status, content = reply_row(site, reply)
        assert status == "interrupted", (status, a.log[-2000:])
        assert len(content) > 0 and words(400).startswith(content)
    assert "Traceback" not in a.log


async def test_a_redis_restart_mid_reply_loses_nothing_and_a_returning_page_catches_up(site):
    a = site.server()
    cookie, conversation = site.info["cookie"], site.info["conversations"][0]
    ws = await open_socket(a, cookie, conversation)
    _, reply = await ask(ws, words(120))  # 6 s of writing

    site.redis.stop()
    await asyncio.sleep(2)
    site.redis.start()

    status, content = wait_for_row(site, reply, lambda status, _: status != "streaming", timeout=30)
    assert (status, content) == ("complete", words(120))

    ws = await open_socket(a, cookie, conversation)  # the page's socket comes back and asks to catch up
    await ws.send(json.dumps({"type": "sync"}))
    path = (await frames_until(ws, "path"))[-1]
    assert words(120) in path["html"] and 'data-status="complete"' in path["html"]
    await ws.send(json.dumps({"type": "send", "content": "and after"}))
    assert (await frames_until(ws, "done"))[-1]["status"] == "complete"
    await ws.close()


async def test_a_redis_blip_keeps_the_open_socket_which_is_caught_up_and_goes_on(site):
    a = site.server()
    cookie, conversation = site.info["cookie"], site.info["conversations"][0]
    ws = await open_socket(a, cookie, conversation)
    _, reply = await ask(ws, words(120))  # 6 s of writing

    site.redis.stop()
    await asyncio.sleep(2)
    site.redis.start()

    # The same socket, never closed: once Redis answers it is caught up (the frames published during the
    # outage are lost) and hears the reply's end.
    frames = await frames_until(ws, lambda f: f["type"] == "done" and f["message_id"] == reply, timeout=30)
    assert frames[-1]["status"] == "complete" and words(120) in frames[-1]["html"]
    assert any(frame["type"] == "path" for frame in frames)  # the catch-up
    await ws.send(json.dumps({"type": "send", "content": "and after"}))
    assert (await frames_until(ws, "done"))[-1]["status"] == "complete"
    assert reply_row(site, reply) == ("complete", words(120))
    assert "Traceback" not in a.log
    await ws.close()


STORM_SETUP = (
    SHELL_PRELUDE
    + """
from conversations.models import Conversation
from modelhub.models import ModelSpec
ModelSpec.objects.create(name="echo", backend="scripted", source="echo delay=0.05", is_default=True)
sockets = []
for n in range(20):
    user = User.objects.create_user(f"user{n}", password="live-pass-123")
    cookie = session_for(f"user{n}")
    sockets += [(cookie, Conversation.objects.create(owner=user).pk) for _ in range(5)]
print(json.dumps(sockets))
"""
)


async def test_a_hundred_sockets_connecting_at_once_to_a_slow_database_are_all_accepted_and_served(tmp_path):
    """No handshake waits for the database (daphne gives it 5 s): the check follows the accept. Here every
    answer of PostgreSQL takes 10 ms more (a database far away, or busy), and 100 pages connect at once."""
    database = PostgresDatabase()
    proxy = TcpProxy(database.port, delay=0.01)
    site = Site(tmp_path, database=database, redis=RedisServer(tmp_path), database_url=database.url(proxy.port), **FAST)
    try:
        sockets = site.setup(STORM_SETUP)
        server = site.server()

        async def connect_and_ask(cookie, conversation):
            """Open the socket, then send a frame the server answers without the database: its answer comes
            only once the socket's check (session, user, conversation) let it in; a refused one closes."""
            ws = await open_socket(server, cookie, conversation)
            await ws.send(json.dumps({"type": "are-you-there"}))
            frame = (await frames_until(ws, "error", timeout=90))[-1]
            await ws.close()
            return frame["code"]

        codes = await asyncio.gather(*(connect_and_ask(*pair) for pair in sockets))
        assert codes == ["unknown_type"] * 100
        assert "WSREJECT" not in server.log and "Traceback" not in server.log
    finally:
        proxy.close()
        site.close()


@pytest.fixture
def proxied_site(tmp_path):
    """A site whose servers reach PostgreSQL through a proxy the test can cut."""
    database = PostgresDatabase()
    proxy = TcpProxy(database.port)
    site = Site(
        tmp_path,
        database=database,
        redis=RedisServer(tmp_path),
        database_url=database.url(proxy.port),
        CHAT_DB_RETRY_SECONDS=6,
        **FAST,
    )
    site.info = site.setup(SETUP)
    site.proxy = proxy
    yield site
    proxy.close()
    site.close()


async def test_postgres_unreachable_for_a_few_seconds_loses_no_message_and_no_reply_text(proxied_site):
    site = proxied_site
    a = site.server()
    ws = await open_socket(a, site.info["cookie"], site.info["conversations"][0])
    _, reply = await ask(ws, words(100))  # 5 s of writing

    site.proxy.cut()
    await asyncio.sleep(3)
    site.proxy.restore()

    frames = await frames_until(ws, "done", timeout=30)
    assert frames[-1]["status"] == "complete"
    assert reply_row(site, reply) == ("complete", words(100))

    # a turn sent while the database is away is saved once it is back (within CHAT_DB_RETRY_SECONDS)
    site.proxy.cut()
    await ws.send(json.dumps({"type": "send", "content": "while away"}))
    await asyncio.sleep(2)
    site.proxy.restore()
    frames = await frames_until(ws, "done", timeout=30)
    assert frames[-1]["status"] == "complete" and text_of(frames, frames[-1]["message_id"]) == "while away"
    assert site.rows("SELECT count(*) FROM conversations_message WHERE content = 'while away' AND role = 'user'") == [
        (1,)
    ]

    # one that outlasts the retries is refused clearly, and nothing of it is saved
    site.proxy.cut()
    await ws.send(json.dumps({"type": "send", "content": "too long away"}))
    error = (await frames_until(ws, "error", timeout=20))[-1]
    site.proxy.restore()
    assert error["code"] == "database_unavailable"
    assert site.rows("SELECT count(*) FROM conversations_message WHERE content = 'too long away'") == [(0,)]
    await ws.close()


def _get(url):
    from urllib.request import urlopen

    with urlopen(url, timeout=10) as response:
        return response.status


async def test_two_turns_sent_at_once_to_two_processes_make_one_reply_and_one_clean_busy(site):
    """The busy check and the insert are one transaction with the conversation row locked."""
    a, b = site.server(), site.server()
    cookie, conversation = site.info["cookie"], site.info["conversations"][0]
    on_a = await open_socket(a, cookie, conversation)
    on_b = await open_socket(b, cookie, conversation)
    for attempt in range(5):  # the two sends race; each round must end the same way
        question = f"round {attempt} " + words(30)  # 1.5 s of writing: the other turn comes while it runs
        await asyncio.gather(
            on_a.send(json.dumps({"type": "send", "content": "a " + question})),
            on_b.send(json.dumps({"type": "send", "content": "b " + question})),
        )
        outcomes = []
        for ws in (on_a, on_b):
            frame = (await frames_until(ws, lambda f: f["type"] in ("error", "done")))[-1]
            if frame["type"] == "error":
                outcomes.append(frame["code"])
            else:  # this socket saw the reply end; did its own turn go through?
                outcomes.append("done")
        assert "busy" in outcomes, outcomes
        await frames_until(on_a if outcomes[0] == "busy" else on_b, "done")  # the loser still sees the reply end
        saved = site.rows(
            "SELECT count(*) FROM conversations_message WHERE role = 'user' AND content LIKE %s", ("_ " + question,)
        )
        assert saved == [(1,)], saved  # the refused turn saved nothing
    replies = site.rows("SELECT status, count(*) FROM conversations_message WHERE role = 'assistant' GROUP BY status")
    assert replies == [("complete", 5)]
    for ws in (on_a, on_b):
        await ws.close()


async def test_a_socket_opened_while_the_database_is_away_is_accepted_and_served_once_it_answers(proxied_site):
    site = proxied_site  # CHAT_DB_RETRY_SECONDS=6
    a = site.server()
    cookie, conversation = site.info["cookie"], site.info["conversations"][0]
    site.proxy.cut()
    ws = await open_socket(a, cookie, conversation)  # the handshake does not ask the database: no HTTP 500
    await asyncio.sleep(2)
    site.proxy.restore()
    await ws.send(json.dumps({"type": "send", "content": "opened while away"}))
    assert (await frames_until(ws, "done", timeout=30))[-1]["status"] == "complete"
    await ws.close()

    site.proxy.cut()  # away for longer than the retries: closed with the code the page retries on
    ws = await open_socket(a, cookie, conversation)
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 30)
    site.proxy.restore()
    assert ws.close_code == 4503
    assert "Internal Server Error" not in a.log and "Traceback" not in a.log
