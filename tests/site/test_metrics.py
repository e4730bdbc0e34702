"""/metrics: who may read it, and that its figures move by exactly what the app did.

Replies are driven through the real websocket stack with a scripted model (the web layer is
under test, and a scripted reply's tokens are known in advance); the gauges of a real loaded
model come from the tiny Llama; a model worker's own metrics port is scraped live. Figures
are read from the exposition text with prometheus_client's parser, before and after.
"""

import json
import urllib.request

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from conversations import metrics
from conversations.models import Conversation, Message
from modelhub import api
from tests.delivery.echo_site import FAST, SETUP, words
from tests.factories import install_scripted
from tests.live import RedisServer, Site, free_port, wait_for_port
from tests.live import frames_until as live_frames_until
from tests.live import open_socket as live_socket
from tests.postgres import PostgresDatabase
from tests.sockets import frames_until, open_socket

TOKEN = "scrape-token-0123456789"


@pytest.fixture(autouse=True)
def _metrics_token(settings):
    settings.METRICS_TOKEN = TOKEN


class Figures:
    """One scrape's samples: figures[name, {labels}] (0 for a sample not there)."""

    def __init__(self, text):
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def __call__(self, name, **labels):
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def names(self):
        return {name for name, _ in self.samples}


def scrape():
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return Figures(response.content.decode())


# --- who may read it -------------------------------------------------------------


def test_it_refuses_anonymous_visitors_with_403_not_a_login_redirect(client, db):
    response = client.get("/metrics")
    assert response.status_code == 403 and b"chatsite_" not in response.content


def test_it_refuses_a_user_who_is_not_staff(client, owner):
    client.force_login(owner)
    assert client.get("/metrics").status_code == 403


def test_staff_read_it_with_their_session(client, staff):
    client.force_login(staff)
    response = client.get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE chatsite_replies_total counter" in response.content


def test_a_scraper_reads_it_with_the_bearer_token_and_a_wrong_one_is_refused(client, db):
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": TOKEN}).status_code == 403


def test_with_no_token_set_an_empty_bearer_token_is_refused(client, db, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer"}).status_code == 403


def test_a_scraper_asking_for_openmetrics_gets_it(client, db):
    response = client.get(
        "/metrics",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.endswith(b"# EOF\n")


# --- counters and histograms -----------------------------------------------------


def test_it_counts_responses_by_status_code(client, db):
    before = scrape()
    client.get("/healthz")
    client.get("/healthz")
    client.get("/no-such-page/")
    client.get("/metrics")  # anonymous
    after = scrape()

    moved = {
        code: after("chatsite_http_requests_total", status=code) - before("chatsite_http_requests_total", status=code)
        for code in ("200", "404", "403")
    }
    assert moved == {"200": 3, "404": 1, "403": 1}  # 2 probes and the first scrape, counted once it was sent


@sync_to_async
def scrape_async():
    return scrape()


@sync_to_async
def replies_of(conversation):
    return list(Message.objects.filter(conversation=conversation, role="assistant").order_by("id"))


async def chat(owner, conversation, *questions):
    socket, connected, _ = await open_socket(owner, conversation)
    assert connected
    for question in questions:
        await socket.send_json_to({"type": "send", "content": question})
        await frames_until(socket, "done")
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_replies_their_tokens_and_timings_move_by_exactly_what_the_chats_did(owner):
    await sync_to_async(install_scripted)(["Hello", " there", ",", " friend", "."], 0.01)
    first, second = [await Conversation.objects.acreate(owner=owner) for _ in range(2)]
    before = await scrape_async()

    await chat(owner, first, "one two three", "four five")
    await chat(owner, second, "six")
    after = await scrape_async()

    def moved(name, **labels):
        return after(name, **labels) - before(name, **labels)

    rows = await replies_of(first) + await replies_of(second)
    assert [(r.status, r.completion_tokens) for r in rows] == [("complete", 5)] * 3
    assert moved("chatsite_replies_total", status="complete", model="scripted") == 3
    assert moved("chatsite_generated_tokens_total", model="scripted") == 15
    # The scripted model counts a prompt's words: 3; then 3 + 3 ("Hello there, friend.") + 2; then 1.
    assert [r.prompt_tokens for r in rows] == [3, 8, 1]
    assert moved("chatsite_prompt_tokens_total", model="scripted") == 12
    assert moved("chatsite_time_to_first_token_seconds_count", model="scripted") == 3
    assert moved("chatsite_time_to_first_token_seconds_sum", model="scripted") == pytest.approx(
        sum(r.time_to_first_token for r in rows)
    )
    assert moved("chatsite_time_per_output_token_seconds_count", model="scripted") == 3
    assert moved("chatsite_time_per_output_token_seconds_sum", model="scripted") == pytest.approx(
        sum((r.duration - r.time_to_first_token) / 4 for r in rows)
    )
    assert moved("chatsite_time_to_first_token_seconds_bucket", model="scripted", le="+Inf") == 3


@pytest.mark.django_db(transaction=True)
async def test_a_failed_reply_is_counted_by_its_status(owner):
    await sync_to_async(install_scripted)(["Hel", RuntimeError("the model broke")])
    conversation = await Conversation.objects.acreate(owner=owner)
    before = await scrape_async()

    await chat(owner, conversation, "hi")
    after = await scrape_async()

    [reply] = await replies_of(conversation)
    assert reply.status == "error"
    assert (
        after("chatsite_replies_total", status="error", model="scripted")
        - before("chatsite_replies_total", status="error", model="scripted")
        == 1
    )
    assert after("chatsite_replies_total", status="complete", model="scripted") == before(
        "chatsite_replies_total", status="complete", model="scripted"
    )
    assert after("chatsite_generated_tokens_total", model="scripted") - before(
        "chatsite_generated_tokens_total", model="scripted"
    ) == (reply.completion_tokens or 0)


def test_a_reply_is_counted_once_when_its_finish_commits(conversation, django_capture_on_commit_callbacks):
    spec, _ = install_scripted()
    reply = conversation.start_reply(spec, {})
    before = scrape()
    with django_capture_on_commit_callbacks(execute=True):
        assert reply.finish(Message.Status.COMPLETE, "done")
        assert not reply.finish(Message.Status.ERROR, "again")  # already finished: nothing changes
        assert scrape()("chatsite_replies_total", status="complete", model="scripted") == before(
            "chatsite_replies_total", status="complete", model="scripted"
        )  # not before the commit
    after = scrape()
    assert (
        after("chatsite_replies_total", status="complete", model="scripted")
        - before("chatsite_replies_total", status="complete", model="scripted")
        == 1
    )
    assert after("chatsite_replies_total", status="error", model="scripted") == before(
        "chatsite_replies_total", status="error", model="scripted"
    )


def test_a_reply_whose_writer_died_is_counted_interrupted_when_it_is_recovered(conversation):
    spec, _ = install_scripted()
    reply = conversation.start_reply(spec, {})
    Message.objects.filter(pk=reply.pk).update(writer="")  # no process writes it any more
    before = scrape()
    assert [m.pk for m in Message.objects.interrupt_orphans()] == [reply.pk]
    assert (
        scrape()("chatsite_replies_total", status="interrupted", model="scripted")
        - before("chatsite_replies_total", status="interrupted", model="scripted")
        == 1
    )


# --- gauges read at scrape time ----------------------------------------------------


def test_the_gauges_show_a_loaded_scripted_model_and_fine_tune_jobs_by_status(db):
    install_scripted()
    figures = scrape()
    assert figures("chatsite_models_loaded") == 1
    assert figures("chatsite_model_state", model="scripted", state="ready") == 1
    assert figures("chatsite_model_replies_running", model="scripted") == 0
    assert ("chatsite_model_replies_waiting", frozenset({("model", "scripted")})) in figures.samples
    assert {figures("chatsite_finetune_jobs", status=s) for s in ("queued", "running", "succeeded", "failed")} == {0}
    assert not any(name.startswith("chatsite_gpu_") for name in figures.names())  # no torch imported for it


@pytest.mark.slow
def test_the_gauges_show_a_real_model_s_memory_batch_and_prefix_cache_reuse(tiny_spec):
    prompt = [{"role": "user", "content": "what do you like to do on the weekend? i like to go hiking and read books."}]
    options = {"temperature": 0, "max_new_tokens": 8}
    "".join(api.start(tiny_spec, prompt, options))
    again = api.start(tiny_spec, prompt, options)  # the same prompt: its keys and values are reused
    "".join(again)

    figures = scrape()
    status = api.runtime()["tiny"]
    assert figures("chatsite_model_state", model="tiny", state="ready") == 1
    assert figures("chatsite_model_memory_bytes", model="tiny") == status["memory_bytes"] > 0
    assert figures("chatsite_model_peak_batch", model="tiny") == 1
    assert figures("chatsite_model_kv_cache_bytes", model="tiny") == status["kv_cache_bytes"] > 0
    assert figures("chatsite_model_kv_cache_entries", model="tiny") == 1
    assert figures("chatsite_model_prefix_cache_reuses_total", model="tiny") == 1
    assert (
        figures("chatsite_model_prefix_cache_reused_tokens_total", model="tiny")
        == (again.usage.cached_prompt_tokens)
        > 0
    )
    assert figures("chatsite_model_replies_running", model="tiny") == 0


# --- a model worker's own port ------------------------------------------------------


def test_a_worker_s_metrics_port_serves_its_process_metrics_and_no_database_ones(db):
    install_scripted()
    port = free_port()
    server, thread = metrics.serve(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            figures = Figures(response.read().decode())
    finally:
        server.shutdown()
        server.server_close()
    assert figures("chatsite_model_state", model="scripted", state="ready") == 1
    assert "chatsite_finetune_jobs" not in figures.names()


def test_the_worker_command_takes_its_metrics_port_from_the_flag_or_the_environment(settings):
    from conversations.management.commands.modelhub_worker import Command

    assert Command().create_parser("manage.py", "modelhub_worker").parse_args([]).metrics_port == 0
    settings.MODELHUB_WORKER_METRICS_PORT = 9109
    options = Command().create_parser("manage.py", "modelhub_worker").parse_args([])
    assert (options.metrics_port, options.metrics_address) == (9109, "127.0.0.1")
    options = Command().create_parser("manage.py", "modelhub_worker").parse_args(["--metrics-port", "9200"])
    assert options.metrics_port == 9200


@pytest.mark.slow
@pytest.mark.live
async def test_a_reply_written_by_a_model_worker_is_counted_on_the_worker_s_port_not_the_web_s(tmp_path):
    site = Site(
        tmp_path,
        database=PostgresDatabase(),
        redis=RedisServer(tmp_path),
        **FAST,
        MODELHUB_WORKERS=1,
        METRICS_TOKEN=TOKEN,
    )
    try:
        info = site.setup(SETUP)
        web, port = site.server(), free_port()
        site.worker("echo", MODELHUB_WORKER_METRICS_PORT=port)
        wait_for_port(port)
        ws = await live_socket(web, info["cookie"], info["conversations"][0])
        await ws.send(json.dumps({"type": "send", "content": words(12)}))
        assert (await live_frames_until(ws, "done"))[-1]["status"] == "complete"
        await ws.close()

        ready = json.loads(_get(f"{web.url}/readyz"))
        worker_figures = Figures(_get(f"http://127.0.0.1:{port}/metrics"))
        web_figures = Figures(_get(f"{web.url}/metrics", {"Authorization": f"Bearer {TOKEN}"}))
    finally:
        site.close()
    assert worker_figures("chatsite_replies_total", status="complete", model="echo") == 1
    assert worker_figures("chatsite_generated_tokens_total", model="echo") == 12
    assert worker_figures("chatsite_prompt_tokens_total", model="echo") == 12
    assert worker_figures("chatsite_model_state", model="echo", state="ready") == 1
    assert web_figures("chatsite_replies_total", status="complete", model="echo") == 0
    assert web_figures("chatsite_models_loaded") == 0  # with model workers on, web processes load none
    assert web_figures("chatsite_http_requests_total", status="200") == 1  # the probe (a scrape counts once sent)
    assert ready == {
        "ready": True,
        "failing": [],
        "checks": {"database": "ok", "channel_layer": "ok", "default_model": "ok"},
    }


def _get(url, headers=None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
        return response.read().decode()
