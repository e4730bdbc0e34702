"""Remote models (an OpenAI-compatible server) when the server is not what it should be: nothing
listening, a server that accepts and never answers, one that answers HTML, a missing API key.
Each case is a real socket and a real HTTP server; a real vLLM is driven in
tests/modelhub/test_vllm_live.py.

Whatever goes wrong, the admin form and `manage.py modelhub test` say so in one sentence, and
a chat reply ends `error` with that sentence, never a stuck `streaming` row.
"""

import http.server
import socket
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from conversations.models import Conversation, Message
from modelhub import api
from modelhub.models import ModelSpec
from modelhub.options import ModelhubError
from tests.factories import remote_spec
from tests.live import http_server
from tests.modelhub.admin_forms import add_form
from tests.sockets import frames_until, open_socket


class _Html(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        body = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def html_server():
    with http_server(_Html) as url:
        yield url


def reply_error(spec):
    request = api.start(spec, [{"role": "user", "content": "hello"}], {"max_new_tokens": 8})
    with pytest.raises(ModelhubError) as caught:
        list(request)
    return caught.value


def test_nothing_listening_fails_the_reply_saying_the_server_cannot_be_reached(db, closed_url):
    error = reply_error(remote_spec(closed_url))
    assert error.code == "remote_unavailable"
    assert error.message.startswith(f"cannot reach the model server at {closed_url}")


def test_a_server_that_never_answers_fails_the_reply_after_the_read_timeout(db, silent_server):
    error = reply_error(remote_spec(silent_server))
    assert error.code == "remote_timeout"
    assert error.message == f"the model server at {silent_server} did not answer within 0.5s"


def test_a_server_answering_html_is_not_taken_for_an_openai_api(db, html_server):
    error = reply_error(remote_spec(html_server))
    assert error.code == "remote_failed"
    assert "did not answer as an OpenAI-compatible API (it sent text/html" in error.message


def test_a_missing_api_key_variable_is_named(db, closed_url, monkeypatch):
    monkeypatch.delenv("CHATSITE_TEST_KEY", raising=False)
    error = reply_error(remote_spec(closed_url, api_key_env="CHATSITE_TEST_KEY"))
    assert error.message == "the API key variable CHATSITE_TEST_KEY is not set in this process's environment"


@pytest.mark.parametrize(
    "server, sentence",
    [
        ("closed_url", "cannot reach the server at"),
        ("html_server", "is not an OpenAI-compatible API: GET /models answered text/html, not a model list"),
        ("silent_server", "did not answer within 0.5s"),
    ],
)
def test_the_admin_form_refuses_a_server_that_is_not_usable_in_one_sentence(admin_client, request, server, sentence):
    url = request.getfixturevalue(server)
    form = add_form("", backend="openai", server_url=url, read_timeout="0.5", connect_timeout="0.5")
    response = admin_client.post(reverse("admin:modelhub_modelspec_add"), form)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["server_url"]
    assert sentence in errors["server_url"][0]
    assert not ModelSpec.objects.exists()


def test_the_admin_form_wants_a_server_url_for_a_remote_model_and_no_weights(admin_client):
    response = admin_client.post(reverse("admin:modelhub_modelspec_add"), add_form("", backend="openai"))
    assert response.context["adminform"].form.errors["server_url"] == ["A remote model needs its server's URL."]


@pytest.mark.parametrize("url", ["ftp://host/v1", "http://user:secret@host/v1", "http://host/v1?key=x", "host:8000"])
def test_a_server_url_with_credentials_a_query_or_another_scheme_is_refused(admin_client, url):
    response = admin_client.post(
        reverse("admin:modelhub_modelspec_add"), add_form("", backend="openai", server_url=url)
    )
    assert "server_url" in response.context["adminform"].form.errors


def test_modelhub_test_says_what_is_wrong_with_the_server(db, html_server):
    remote_spec(html_server)
    with pytest.raises(CommandError, match="is not an OpenAI-compatible API"):
        call_command("modelhub", "test", "remote", stdout=StringIO(), stderr=StringIO())


async def test_a_chat_reply_from_an_unreachable_server_ends_as_an_error_and_keeps_the_question(
    transactional_db, owner, closed_url
):
    from asgiref.sync import sync_to_async

    await sync_to_async(remote_spec)(closed_url)
    conversation = await Conversation.objects.acreate(owner=owner)
    communicator, connected, _ = await open_socket(owner, conversation)
    assert connected
    await communicator.send_json_to({"type": "send", "content": "hello there"})
    frames = await frames_until(communicator, "done")
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["remote_unavailable"]
    assert frames[-1]["status"] == "error"
    rows = [(m.role, m.status, m.content) async for m in Message.objects.filter(conversation=conversation)]
    assert rows == [("user", "complete", "hello there"), ("assistant", "error", "")]
    await communicator.disconnect()


def test_a_remote_model_that_names_no_weights_cannot_be_fine_tuned(db, closed_url, tmp_path):
    from modelhub.models import FinetuneJob
    from modelhub.models.finetune_job import FinetuneError

    spec = remote_spec(closed_url)  # no source: nothing local to train
    with pytest.raises(FinetuneError, match="names no weights to train on"):
        FinetuneJob.objects.create_for(spec, "sft", tmp_path / "t.jsonl", tmp_path / "e.jsonl")


def test_a_remote_request_waits_for_replies_being_saved_then_goes_with_them(db, settings):
    """While another turn is being saved (announced with api.reserve), a request is held, at most
    MODELHUB_ARRIVAL_HOLD_SECONDS after the last one came, so that a burst reaches the server together."""
    import time

    settings.MODELHUB_ARRIVAL_HOLD_SECONDS = 5.0
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.3)
    spec = remote_spec(f"http://127.0.0.1:{listener.getsockname()[1]}/v1")
    try:
        saving = api.reserve()  # another turn, still being saved
        request = api.start(spec, [{"role": "user", "content": "hello"}], {"max_new_tokens": 8})
        with pytest.raises(socket.timeout):
            listener.accept()  # held: nothing reached the server
        saving.release()  # that turn's request went its own way: the held one goes now
        started = time.monotonic()
        connection, _ = listener.accept()
        assert time.monotonic() - started < 0.3
        connection.close()
        request.cancel()
    finally:
        listener.close()


def test_a_remote_request_sends_tools_only_when_it_has_some():
    """vLLM refuses `tools: []`: a request without tools sends no tools field at all."""
    from modelhub.backends.remote import sampling
    from modelhub.options import GenerationOptions

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sampling(GenerationOptions()))
    sent = sampling(GenerationOptions(tools=[tool], tool_choice="required"))
    assert (sent["tools"], sent["tool_choice"], sent["parallel_tool_calls"]) == ([tool], "required", True)
