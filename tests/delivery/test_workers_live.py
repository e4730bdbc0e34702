"""Model worker processes, live: two daphne processes that load no model (MODELHUB_WORKERS=1) and a
`manage.py modelhub_worker` process that owns the model and writes the replies, on one PostgreSQL
database and a Redis channel layer of the test's own, over real sockets.

The model is a registered scripted one that echoes the user's words, 20 a second (see
test_deployed.py): the processes, the handoff, the heartbeats and the sockets are what is
under test here, and a reply's whole text is known in advance.
"""

import asyncio
import json

import pytest

from tests.delivery.echo_site import FAST, SETUP, ask, reply_row, wait_for_row, words
from tests.live import SHELL_PRELUDE, RedisServer, Site, frames_until, open_socket, text_of
from tests.postgres import PostgresDatabase

pytestmark = [pytest.mark.slow, pytest.mark.live]

WEB = {"MODELHUB_WORKERS": 1, "MODELHUB_WORKER_TIMEOUT_SECONDS": 3}


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path, database=PostgresDatabase(), redis=RedisServer(tmp_path), **FAST, **WEB)
    site.info = site.setup(SETUP)
    yield site
    site.close()


def writer_of(site, message_id):
    return site.rows("SELECT writer FROM conversations_message WHERE id = %s", (message_id,))[0][0]


async def test_a_worker_writes_the_reply_watched_from_two_web_processes_and_a_stop_from_either_ends_it(site):
    a, b = site.server(), site.server()
    worker = site.worker("echo")
    cookie, conversation = site.info["cookie"], site.info["conversations"][0]
    on_a = await open_socket(a, cookie, conversation)
    on_b = await open_socket(b, cookie, conversation)

    await on_a.send(json.dumps({"type": "send", "content": words(12)}))
    frames = await frames_until(on_b, "done")
    reply = frames[-1]["message_id"]
    assert frames[-1]["status"] == "complete"
    assert text_of(frames, reply) == words(12)
    assert reply_row(site, reply) == ("complete", words(12))
    assert f":{worker.pid}:" in writer_of(site, reply)  # the worker wrote it, not the web process

    _, reply = await ask(on_a, words(400, "x"))
    await on_b.send(json.dumps({"type": "stop"}))  # from the process that neither saved nor writes it
    done = (await frames_until(on_a, "done"))[-1]
    assert done["message_id"] == reply and done["status"] == "stopped"
    status, content = wait_for_row(site, reply, lambda status, _: status != "streaming")
    assert status == "stopped" and 0 < len(content) < len(words(400, "x"))
    assert words(400, "x").startswith(content)
    for server in (a, b, worker):
        assert "Traceback" not in server.log
    for ws in (on_a, on_b):
        await ws.close()


async def test_a_page_that_reconnects_mid_reply_catches_up_from_the_worker(site):
    a, b = site.server(), site.server()
    site.worker("echo")
    cookie, conversation = site.info["cookie"], site.info["conversations"][0]
    on_a = await open_socket(a, cookie, conversation)
    _, reply = await ask(on_a, words(80))
    await asyncio.sleep(1)

    late = await open_socket(b, cookie, conversation)  # a page opened on the other process, mid-reply
    await late.send(json.dumps({"type": "sync"}))
    frames = await frames_until(late, lambda f: f["type"] == "message" and f["message_id"] == reply and "offset" in f)
    snapshot = frames[-1]
    assert snapshot["offset"] > 0  # the worker's text so far
    frames += await frames_until(late, "done")
    assert frames[-1]["status"] == "complete"
    assert reply_row(site, reply) == ("complete", words(80))
    for ws in (on_a, late):
        await ws.close()


async def test_a_killed_worker_s_reply_is_interrupted_with_its_text_and_a_restarted_worker_answers_the_next(site):
    a, b = site.server(), site.server()
    worker = site.worker("echo")
    cookie, conversation = site.info["cookie"], site.info["conversations"][0]
    on_a = await open_socket(a, cookie, conversation)
    on_b = await open_socket(b, cookie, conversation)
    _, reply = await ask(on_a, words(400))
    await frames_until(on_b, lambda f: f["type"] == "chunk" and f["offset"] > 100)
    await asyncio.sleep(1)  # a few flushes
    worker.kill()

    done = (await frames_until(on_b, "done", timeout=15))[-1]  # a web process's heartbeat notices
    assert done["message_id"] == reply and done["status"] == "interrupted"
    status, content = reply_row(site, reply)
    assert status == "interrupted" and len(content) > 100 and words(400).startswith(content)

    site.worker()  # no --models: every enabled model
    await on_a.send(json.dumps({"type": "send", "content": words(5, "after")}))
    frames = await frames_until(on_a, lambda f: f["type"] == "done" and f["message_id"] != reply)
    assert frames[-1]["status"] == "complete"
    assert text_of(frames, frames[-1]["message_id"]) == words(5, "after")
    for server in (a, b):
        assert "Traceback" not in server.log
    for ws in (on_a, on_b):
        await ws.close()


async def test_with_no_worker_the_turn_fails_within_the_timeout_and_a_late_worker_does_not_write_it(site):
    a = site.server()
    ws = await open_socket(a, site.info["cookie"], site.info["conversations"][0])
    await ws.send(json.dumps({"type": "send", "content": words(5)}))
    frames = await frames_until(ws, "done", timeout=10)
    reply = frames[-1]["message_id"]
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["no_model_worker"]
    assert "No model worker took this reply within 3 s" in errors[0]["message"]
    assert frames[-1]["status"] == "error"
    user_rows = site.rows("SELECT content FROM conversations_message WHERE role = 'user'")
    assert user_rows == [(words(5),)]  # the question is kept

    worker = site.worker("echo")  # receives the stale offer from Redis, and drops it
    await asyncio.sleep(2)
    assert reply_row(site, reply) == ("error", "")
    await ws.send(json.dumps({"type": "send", "content": words(4, "now")}))
    frames = await frames_until(ws, lambda f: f["type"] == "done" and f["message_id"] != reply)
    assert frames[-1]["status"] == "complete"
    assert "Traceback" not in worker.log
    await ws.close()


async def test_sigterm_on_a_worker_saves_its_replies_with_their_text(site):
    a = site.server()
    worker = site.worker("echo")
    cookie, conversations = site.info["cookie"], site.info["conversations"]
    sockets, replies = [], []
    for conversation in conversations[:2]:
        ws = await open_socket(a, cookie, conversation)
        replies.append((await ask(ws, words(400)))[1])
        sockets.append(ws)
    await asyncio.sleep(0.6)

    assert await asyncio.to_thread(worker.stop) == 0
    for reply, ws in zip(replies, sockets):
        status, content = reply_row(site, reply)
        assert status == "interrupted", (status, worker.log[-2000:])
        assert len(content) > 0 and words(400).startswith(content)
        done = (await frames_until(ws, "done"))[-1]
        assert done["message_id"] == reply and done["status"] == "interrupted"
        await ws.close()
    assert "Traceback" not in worker.log


ARENA = """
from django.db import transaction
from modelhub.models import Adapter, ModelSpec
from conversations.arena.generation import start_generation
from conversations.models import Arena, Conversation, Feedback
from conversations.training_data.export import export_snapshot
staff = User.objects.create_user("staff", password="live-pass-123", is_staff=True)
echo = ModelSpec.objects.get(name="echo")
candidate = Adapter.objects.create(name="candidate", base=echo, path="/adapters/candidate", enabled=False)
for i in range(6):
    conversation = Conversation.objects.start_for(staff)
    conversation.add_user_message(f"question number {i}")
    reply = conversation.start_reply(echo, {})
    reply.finish("complete", "I do not know.")
    Feedback.record(staff, reply, correction=f"{i}.")
snapshot = export_snapshot("dpo", eval_fraction=0.5)
with transaction.atomic():
    arena = Arena.open(staff, snapshot, candidate, prompts=3, seed=3)
    start_generation(arena)
print(json.dumps({"arena": arena.pk}))
"""


async def test_an_arenas_answers_are_written_by_the_worker_not_the_web_process(site):
    worker = site.worker("echo")
    arena = (await asyncio.to_thread(site.setup, SHELL_PRELUDE + ARENA))["arena"]
    deadline = asyncio.get_running_loop().time() + 30
    while site.rows("SELECT status FROM conversations_arena WHERE id = %s", (arena,))[0][0] != "ready":
        assert asyncio.get_running_loop().time() < deadline, worker.log[-3000:]
        await asyncio.sleep(0.2)
    answers = site.rows(
        "SELECT m.status, m.content, m.writer FROM conversations_message m JOIN conversations_arenamatch"
        " a ON m.id IN (a.candidate_answer_id, a.opponent_answer_id) WHERE a.arena_id = %s",
        (arena,),
    )
    assert len(answers) == 6
    assert {status for status, _, _ in answers} == {"complete"}
    assert all(content.startswith("question number") for _, content, _ in answers)  # echoed by the worker's model
    assert all(f":{worker.pid}:" in writer for _, _, writer in answers)


def admin_session(site):
    """A superuser's session cookie and a CSRF token pair for the admin pages of the live servers."""
    return site.setup(
        SHELL_PRELUDE
        + """
User.objects.create_superuser("boss", password="live-pass-123")
print(json.dumps({"cookie": session_for("boss")}))
"""
    )["cookie"]


def http(server, path, cookie, data=None):
    from urllib.parse import urlencode
    from urllib.request import Request, urlopen

    csrf = "LiveCsrfToken0123456789abcdefghi"  # 32 letters and digits, the same in cookie and form
    headers = {"Cookie": f"sessionid={cookie}; csrftoken={csrf}", "Referer": server.url + path}
    body = urlencode({**data, "csrfmiddlewaretoken": csrf}).encode() if data is not None else None
    with urlopen(Request(server.url + path, data=body, headers=headers), timeout=30) as response:
        return response.read().decode()


async def test_the_admin_shows_each_workers_runtime_and_tries_a_prompt_on_a_worker(site):
    worker = site.worker("echo")
    a = site.server()
    cookie = await asyncio.to_thread(admin_session, site)
    spec_id = site.rows("SELECT id FROM modelhub_modelspec WHERE name = 'echo'")[0][0]

    page = await asyncio.to_thread(http, a, "/admin/modelhub/modelspec/", cookie)
    assert f"worker {worker_name(site, worker)}: loaded" in page

    reply = await asyncio.to_thread(
        http,
        a,
        f"/admin/modelhub/modelspec/{spec_id}/test/stream/",
        cookie,
        {"prompt": "try this on the worker", "adapter": ""},
    )
    assert reply == "try this on the worker"  # the scripted model echoes it, in the worker process

    assert "Traceback" not in a.log and "Traceback" not in worker.log


def worker_name(site, worker):
    host, pid = site.rows("SELECT host, pid FROM modelhub_modelworker")[0]
    assert pid == worker.pid
    return f"{host}:{pid}"


async def test_a_workers_reply_goes_on_while_a_page_watches_and_is_interrupted_once_none_does(site):
    a = site.server(CHAT_ORPHAN_GRACE_SECONDS=0.5)
    site.worker("echo", CHAT_ORPHAN_GRACE_SECONDS=0.5)  # it calls the roll every half second
    cookie, conversation = site.info["cookie"], site.info["conversations"][0]
    ws = await open_socket(a, cookie, conversation)
    _, reply = await ask(ws, words(60))  # 3 s: six roll calls, each answered by the page
    frames = await frames_until(ws, "done")
    assert frames[-1]["status"] == "complete" and reply_row(site, reply) == ("complete", words(60))

    _, reply = await ask(ws, words(400))
    await ws.close()  # nobody watches anywhere now
    status, content = wait_for_row(site, reply, lambda status, _: status != "streaming", timeout=10)
    assert status == "interrupted" and 0 < len(content) < len(words(400))


async def test_with_two_workers_one_stopping_the_next_turns_are_answered_by_the_other(site):
    a = site.server()
    first, second = site.worker("echo"), site.worker("echo")
    cookie, conversations = site.info["cookie"], site.info["conversations"]
    assert await asyncio.to_thread(first.stop) == 0
    for conversation in conversations[:3]:
        ws = await open_socket(a, cookie, conversation)
        await ws.send(json.dumps({"type": "send", "content": words(4)}))
        frames = await frames_until(ws, "done")
        assert frames[-1]["status"] == "complete"
        assert f":{second.pid}:" in writer_of(site, frames[-1]["message_id"])
        await ws.close()


def fetch(server, path, cookie):
    """(status, content type, body) of a GET with this session."""
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    try:
        with urlopen(Request(server.url + path, headers={"Cookie": f"sessionid={cookie}"}), timeout=120) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


async def test_a_reply_written_by_a_worker_keeps_its_token_probabilities_and_the_worker_computes_its_attention(site):
    """The built-in model (probabilities on) served by a worker: the web processes load no model, yet the
    Inspect view reads the kept probabilities and the attention page gets its pass from the worker."""
    site.manage("ensure_builtin_model")
    info = site.setup(
        SHELL_PRELUDE
        + """
from conversations.models import Conversation
from modelhub.models import ModelSpec
spec = ModelSpec.objects.get(name="chitchat")
spec.max_new_tokens = 12
spec.save()
c = Conversation.objects.create(owner=User.objects.get(username="owner"), model=spec)
print(json.dumps({"conversation": c.pk}))
"""
    )
    worker = site.worker("chitchat")
    a = site.server()
    cookie = site.info["cookie"]
    ws = await open_socket(a, cookie, info["conversation"])
    await ws.send(json.dumps({"type": "send", "content": "hello, how are you?"}))
    done = (await frames_until(ws, "done", timeout=120))[-1]
    await ws.close()
    reply = done["message_id"]
    kept = site.rows("SELECT token_probs::text FROM conversations_message WHERE id = %s", (reply,))[0][0]
    assert kept is not None and json.loads(kept)[0][3]  # each token with its alternatives
    base = f"/c/{info['conversation']}/m/{reply}"

    status, _, body = await asyncio.to_thread(fetch, a, f"{base}/inspect/", cookie)
    assert status == 200 and body.decode().count('class="tok ') >= len(json.loads(kept))
    status, _, body = await asyncio.to_thread(fetch, a, f"{base}/attention/?token=1&layer=0&head=0", cookie)
    page = body.decode()
    assert status == 200 and 'class="atok' in page and "attention-why-not" not in page
    status, kind, image = await asyncio.to_thread(fetch, a, f"{base}/attention/map.png?layer=0&head=0", cookie)
    assert status == 200 and kind == "image/png" and image[:4] == b"\x89PNG"
    assert "(quantization none)" in worker.log and "(quantization none)" not in a.log  # no model loaded on the web
    for process in (a, worker):
        assert "Traceback" not in process.log
