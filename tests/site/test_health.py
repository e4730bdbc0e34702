"""/healthz and /readyz: open to anyone, quick, and failing for real failures.

Each failure is made for real: a database settings entry that points nowhere, a channel layer on a
Redis port where nothing listens (or where a socket accepts and never answers), a model folder
that is not there, a remote model server that is down. Nothing checked is mocked.
"""

import http.server
import json
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connections

from modelhub.models import ModelSpec
from modelhub.registry import registry
from tests.factories import install_scripted, remote_spec
from tests.live import free_port, http_server

ALL_OK = {"database": "ok", "channel_layer": "ok", "default_model": "ok"}


def readyz(client):
    started = time.monotonic()
    response = client.get("/readyz")
    response.elapsed = time.monotonic() - started
    response.body = json.loads(response.content)
    return response


def redis_layer(url):
    return {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [url]}}}


# --- /healthz ------------------------------------------------------------------------


def test_healthz_says_ok_without_touching_the_database(client):  # no db fixture: a query would fail the test
    response = client.get("/healthz")
    assert (response.status_code, response.content, response["Content-Type"]) == (200, b"ok", "text/plain")


def test_the_probes_answer_get_only(client):
    assert client.post("/healthz").status_code == 405
    assert client.post("/readyz").status_code == 405


# --- /readyz when all is well -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_readyz_is_200_when_the_database_the_channel_layer_and_the_default_model_answer(client):
    install_scripted()
    response = readyz(client)
    assert response.status_code == 200
    assert response.body == {"ready": True, "failing": [], "checks": ALL_OK}


@pytest.mark.django_db(transaction=True)
def test_the_built_in_model_is_ready_from_its_files_without_loading_it(client):
    call_command("ensure_builtin_model", stdout=StringIO())
    response = readyz(client)
    assert response.status_code == 200 and response.body["checks"]["default_model"] == "ok"
    assert registry.status() == {}  # nothing was loaded, nor started loading


class _OpenAIModels(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "remote", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.django_db(transaction=True)
def test_a_remote_default_model_is_ready_when_its_server_lists_it(client):
    with http_server(_OpenAIModels) as url:
        remote_spec(url)
        response = readyz(client)
    assert response.status_code == 200 and response.body["checks"]["default_model"] == "ok"


# --- /readyz when something cannot answer ----------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_readyz_is_503_naming_the_database_when_it_cannot_be_reached(client, tmp_path):
    install_scripted()
    entry = connections.settings["default"]
    saved = dict(entry)
    if connections["default"].vendor == "sqlite":
        entry["NAME"] = str(tmp_path / "no-such-folder" / "db.sqlite3")  # sqlite cannot open it
    else:
        entry["PORT"] = free_port()  # nothing listens there
    try:
        response = readyz(client)
    finally:
        entry.clear()
        entry.update(saved)
    assert response.status_code == 503
    assert response.body["failing"][0] == "database"
    assert response.body["checks"]["database"] == "failing: OperationalError"
    assert response.body["checks"]["channel_layer"] == "ok"


@pytest.mark.django_db(transaction=True)
def test_readyz_is_503_naming_the_channel_layer_when_its_redis_is_not_there(client, settings):
    install_scripted()
    settings.CHANNEL_LAYERS = redis_layer(f"redis://127.0.0.1:{free_port()}/0")
    response = readyz(client)
    assert response.status_code == 503
    assert response.body["failing"] == ["channel_layer"]
    assert response.body["checks"]["channel_layer"].startswith("failing: ")
    assert response.elapsed < 4
    assert "127.0.0.1" not in response.content.decode()  # addresses and error text go to the log only


@pytest.mark.django_db(transaction=True)
def test_a_channel_layer_that_never_answers_fails_the_probe_within_its_timeout(client, settings, silent_server):
    install_scripted()
    settings.CHANNEL_LAYERS = redis_layer(silent_server.replace("http://", "redis://").replace("/v1", "/0"))
    response = readyz(client)
    assert response.status_code == 503
    assert response.body["checks"] == {**ALL_OK, "channel_layer": "failing: no answer within 2s"}
    assert response.elapsed < 4


@pytest.mark.django_db(transaction=True)
def test_readyz_is_503_when_no_model_is_registered(client):
    response = readyz(client)
    assert response.status_code == 503
    assert response.body["checks"] == {**ALL_OK, "default_model": "failing: unknown_model"}


@pytest.mark.django_db(transaction=True)
def test_readyz_is_503_when_the_default_model_s_folder_is_gone(client, tmp_path):
    ModelSpec.objects.create(name="gone", source=str(tmp_path / "gone"), is_default=True)
    response = readyz(client)
    assert response.status_code == 503
    assert response.body["checks"] == {**ALL_OK, "default_model": "failing: model_load_failed"}


@pytest.mark.django_db(transaction=True)
def test_readyz_is_503_when_the_remote_default_model_s_server_is_down(client, closed_url):
    remote_spec(closed_url)
    response = readyz(client)
    assert response.status_code == 503
    assert response.body["checks"] == {**ALL_OK, "default_model": "failing: remote_unavailable"}


@pytest.mark.django_db(transaction=True)
def test_with_model_workers_on_the_default_model_is_ready_only_while_a_live_worker_serves_it(client, settings):
    from modelhub.models import ModelWorker

    spec, _ = install_scripted()
    registry.unload(spec.name)  # web processes load no model when workers serve them
    settings.MODELHUB_WORKERS = True
    assert readyz(client).body["checks"]["default_model"] == "failing: no_model_worker"
    ModelWorker.report("gpu-box:4242:token", {spec.name: {"state": "ready"}})
    assert readyz(client).body["checks"]["default_model"] == "ok"
