"""Bad input to the OpenAI-compatible API, sent over a real socket to a real daphne (the embedded default):
every case is answered in OpenAI's JSON error shape with a 4xx status naming what is wrong, never a 500,
never a dropped connection, and nothing is stored for it."""

import json
import socket

import pytest

from tests.live import SHELL_PRELUDE, Site

pytestmark = [pytest.mark.slow, pytest.mark.live]

SETUP = (
    SHELL_PRELUDE
    + """
from conversations.models import ApiKey
from modelhub.models import ModelSpec
ModelSpec.objects.create(name="echo", backend="scripted", source="echo", is_default=True)
owner = User.objects.create_user("owner", password="live-pass-123")
print(json.dumps({"kept": ApiKey.objects.issue(owner, "kept")[1],
                  "unkept": ApiKey.objects.issue(owner, "unkept", keep_calls=False)[1]}))
"""
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = Site(tmp_path_factory.mktemp("bad-input"))
    try:
        site.keys = site.setup(SETUP)
        site.web = site.server()
        yield site
        assert "Traceback" not in site.web.log
    finally:
        site.close()


def exchange(site, request, timeout=30):
    """Send raw bytes, read until the server closes or the response is whole: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", site.web.port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):  # it answered before reading all of it
            pass
        received = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
            head, _, body = received.partition(b"\r\n\r\n")
            length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if length and len(body) >= int(length[0].split(b":")[1]):
                break
    assert received, "the connection was closed with no response"
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, head.decode("latin-1").lower(), body


def http(method, path, body=b"", headers=()):
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Length: {len(body)}",
        "Content-Type: application/json",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def completion(site, body, key="kept"):
    return exchange(site, http("POST", "/v1/chat/completions", body, [f"Authorization: Bearer {site.keys[key]}"]))


def openai_error(status, head, body):
    assert "application/json" in head
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return status, error["code"], error["param"]


def stored_messages(site):
    return site.rows("SELECT count(*) FROM conversations_message")[0][0]


def test_json_nested_past_the_parsers_depth_is_a_400(site):
    for nested in (b"[" * 200_000, b'{"model": "echo", "messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"):
        assert openai_error(*completion(site, nested)) == (400, "invalid_json", None)


@pytest.mark.parametrize("key", ["kept", "unkept"])
@pytest.mark.parametrize("role", ["user", "system"])
def test_a_lone_surrogate_in_a_message_is_a_400_naming_it_and_nothing_is_stored(site, key, role):
    before = stored_messages(site)
    messages = (
        [{"role": "user", "content": "hi \ud800 there"}]
        if role == "user"
        else [{"role": "system", "content": "be \udfff kind"}, {"role": "user", "content": "hi"}]
    )
    body = json.dumps({"model": "echo", "messages": messages}).encode()  # the surrogates escaped: valid JSON
    assert b"\\ud" in body
    assert openai_error(*completion(site, body, key)) == (400, "invalid_text", "messages[0].content")
    assert stored_messages(site) == before


@pytest.mark.parametrize("key", ["kept", "unkept"])
def test_an_empty_question_is_a_400_and_nothing_is_stored(site, key):
    before = stored_messages(site)
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": ""}]}).encode()
    assert openai_error(*completion(site, body, key)) == (400, "empty_message", "messages[0].content")
    assert stored_messages(site) == before


def test_an_authorization_header_of_100_kb_is_a_431_in_json(site):
    request = http("POST", "/v1/chat/completions", b"{}", [f"Authorization: Bearer {'x' * 100_000}"])
    assert openai_error(*exchange(site, request))[:2] == (431, "request_headers_too_large")


def test_headers_over_16_kb_in_all_are_a_431_in_json_and_broken_http_a_400(site):
    many = [f"X-Filler-{n}: {'y' * 200}" for n in range(100)]
    assert openai_error(*exchange(site, http("GET", "/v1/models", headers=many)))[:2] == (
        431,
        "request_headers_too_large",
    )
    assert openai_error(*exchange(site, b"GET /v1/models HTTP/1.1\r\nno colon here\r\n\r\n"))[:2] == (
        400,
        "invalid_http",
    )


def test_a_post_to_the_models_list_is_a_405_and_an_unknown_api_path_a_404(site):
    auth = [f"Authorization: Bearer {site.keys['kept']}"]
    assert openai_error(*exchange(site, http("POST", "/v1/models", b"{}", auth)))[:2] == (405, "method_not_allowed")
    assert openai_error(*exchange(site, http("POST", "/v1/completions", b"{}", auth)))[:2] == (404, "unknown_url")
    status, _, body = exchange(site, http("GET", "/v1/models", headers=auth))
    assert status == 200 and [model["id"] for model in json.loads(body)["data"]] == ["echo"]
