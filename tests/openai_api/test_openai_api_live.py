"""The OpenAI-compatible API, live, through the official `openai` client: a real daphne serving the
built-in model (the real transformers path) with a LoRA adapter made here, over real sockets, in the
embedded default (SQLite, channel layer in memory), the deployed setup (PostgreSQL, Redis, two
daphne processes), and the same with a model worker process writing every reply (MODELHUB_WORKERS).

Every answer is checked against what was stored: the conversation a kept call leaves behind (its
text, its usage, its key's name, its consent), and nothing at all for a key that keeps no calls.
"""

import json
import time

import openai
import pytest

from tests.adapters import make_builtin_adapter
from tests.live import SHELL_PRELUDE, RedisServer, Site
from tests.postgres import PostgresDatabase

pytestmark = [pytest.mark.slow, pytest.mark.live]

SETUP = (
    SHELL_PRELUDE
    + """
import io
from django.core.management import call_command
from conversations.models import ApiKey, PrivacySettings
from modelhub.models import Adapter, ModelSpec
call_command("ensure_builtin_model", stdout=io.StringIO())
chitchat = ModelSpec.objects.get(name="chitchat")
Adapter.objects.create(base=chitchat, name="tone", path={adapter!r})
ModelSpec.objects.create(name="private", source=chitchat.source, visibility=ModelSpec.Visibility.STAFF)
owner = User.objects.create_user("owner", password="live-pass-123")
other = User.objects.create_user("other", password="live-pass-123")
PrivacySettings.set_default(other, allow_training=False)
keys = {{
    "owner": ApiKey.objects.issue(owner, "notebook")[1],
    "unkept": ApiKey.objects.issue(owner, "private script", keep_calls=False)[1],
    "revoked": ApiKey.objects.issue(owner, "old laptop")[1],
    "other": ApiKey.objects.issue(other, "editor")[1],
}}
ApiKey.objects.get(name="old laptop").revoke()
print(json.dumps(keys))
"""
)

QUESTION = [{"role": "user", "content": "Hello there, how are you?"}]
GREEDY = {"temperature": 0, "max_tokens": 24}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return make_builtin_adapter(tmp_path_factory.mktemp("adapters") / "tone", seed=1)


@pytest.fixture(scope="module", params=["embedded", "deployed", "workers"])
def site(request, tmp_path_factory, adapter):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "embedded":
        site = Site(folder, CHAT_MAX_REPLIES_PER_USER=2, CHAT_API_QUEUE_SECONDS=0.5)
    else:
        workers = {"MODELHUB_WORKERS": 1} if request.param == "workers" else {}
        site = Site(
            folder,
            database=PostgresDatabase(),
            redis=RedisServer(folder),
            CHAT_MAX_REPLIES_PER_USER=2,
            CHAT_API_QUEUE_SECONDS=0.5,
            **workers,
        )
    try:
        site.keys = site.setup(SETUP.format(adapter=str(adapter)))
        site.webs = [site.server()]
        if request.param != "embedded":
            site.webs.append(site.server())  # a second web process: calls go to either
        if request.param == "workers":
            site.worker()  # the web processes load no model: a model worker writes every reply
        yield site
        assert not [server.log_path.name for server in site.servers if "Traceback" in server.log]
    finally:
        site.close()


def client(site, key="owner", server=0):
    return openai.OpenAI(base_url=site.webs[server].url + "/v1", api_key=site.keys[key], max_retries=0, timeout=120)


def stored_reply(site):
    """The newest assistant row: (content, status, prompt tokens, completion tokens, adapter, conversation id)."""
    return site.rows(
        "SELECT content, status, prompt_tokens, completion_tokens, adapter_name, conversation_id "
        "FROM conversations_message WHERE role = 'assistant' ORDER BY id DESC LIMIT 1"
    )[0]


def wait_for_status(site, conversation_id, statuses, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        rows = site.rows(
            "SELECT status, content FROM conversations_message WHERE role = 'assistant' AND conversation_id = %s",
            (conversation_id,),
        )
        if rows and rows[0][0] in statuses:
            return rows[0]
        assert time.monotonic() < deadline, f"the reply is still {rows}"
        time.sleep(0.1)


def test_the_models_list_shows_what_the_keys_user_may_use_models_and_adapters(site):
    names = [model.id for model in client(site).models.list()]
    assert names == ["chitchat", "chitchat:tone"]  # the staff-only model is not listed


def test_a_completion_is_the_stored_reply_of_a_new_conversation_with_the_keys_name(site):
    completion = client(site).chat.completions.create(
        model="chitchat", messages=[{"role": "system", "content": "You are brief."}, *QUESTION], **GREEDY
    )
    content, status, prompt_tokens, completion_tokens, adapter, conversation_id = stored_reply(site)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "chitchat"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == content and content
    assert choice.finish_reason in ("stop", "length") and status == "complete"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt_tokens, completion_tokens)
    assert completion.usage.total_tokens == prompt_tokens + completion_tokens
    assert site.rows(
        "SELECT api_key_name, system_prompt, title, allow_training FROM conversations_conversation WHERE id = %s",
        (conversation_id,),
    ) == [("notebook", "You are brief.", QUESTION[0]["content"], True)]
    questions = site.rows(
        "SELECT content FROM conversations_message WHERE role = 'user' AND conversation_id = %s", (conversation_id,)
    )
    assert questions == [(QUESTION[0]["content"],)]


def test_a_streamed_completion_sends_the_stored_text_and_usage_in_openai_chunks(site):
    stream = client(site, server=-1).chat.completions.create(
        model="chitchat",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
        max_tokens=12,
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    content, status, prompt_tokens, completion_tokens, _, _ = stored_reply(site)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and completion_tokens == 12 and status == "complete"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (prompt_tokens, 12)
    assert len({c.id for c in chunks}) == 1


def test_an_adapter_is_asked_for_by_name_and_changes_the_answer(site):
    api = client(site)
    base = api.chat.completions.create(model="chitchat", messages=QUESTION, **GREEDY).choices[0].message.content
    tuned = api.chat.completions.create(model="chitchat:tone", messages=QUESTION, **GREEDY)
    content, _, _, _, adapter, _ = stored_reply(site)
    assert tuned.model == "chitchat:tone" and adapter == "tone"
    assert tuned.choices[0].message.content == content != base


def test_a_stop_sequence_ends_the_answer_right_before_it(site):
    api = client(site)
    whole = (
        api.chat.completions.create(
            model="chitchat", messages=QUESTION, temperature=0, max_tokens=40, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .message.content
    )
    stop = whole[len(whole) // 2 : len(whole) // 2 + 4]
    cut = api.chat.completions.create(
        model="chitchat", messages=QUESTION, temperature=0, max_tokens=40, stop=[stop], extra_body={"ignore_eos": True}
    )
    assert cut.choices[0].message.content == whole[: whole.index(stop)] == stored_reply(site)[0]
    assert cut.choices[0].finish_reason == "stop"


def test_a_wrong_or_revoked_key_gets_401_and_nothing_is_stored(site):
    before = site.rows("SELECT count(*) FROM conversations_message")
    for key in ("cs-not-a-key", site.keys["revoked"]):
        api = openai.OpenAI(base_url=site.webs[0].url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            api.chat.completions.create(model="chitchat", messages=QUESTION, **GREEDY)
        assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            api.models.list()
    assert site.rows("SELECT count(*) FROM conversations_message") == before


def test_a_model_the_user_may_not_use_is_404_and_a_bad_field_is_400_naming_it(site):
    with pytest.raises(openai.NotFoundError) as caught:
        client(site, "other").chat.completions.create(model="private", messages=QUESTION, **GREEDY)
    assert caught.value.code == "model_not_found"
    for bad, param in (
        ({"temperature": 5}, "temperature"),
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client(site).chat.completions.create(model="chitchat", messages=QUESTION, **{**GREEDY, **bad})
        assert caught.value.status_code == 400 and caught.value.param == param, caught.value


def test_a_users_consent_default_is_kept_with_the_calls_conversation(site):
    client(site, "other").chat.completions.create(model="chitchat", messages=QUESTION, **GREEDY)
    conversation_id = stored_reply(site)[5]
    assert site.rows(
        "SELECT allow_training, api_key_name FROM conversations_conversation WHERE id = %s", (conversation_id,)
    ) == [(False, "editor")]


def test_a_key_that_keeps_no_calls_leaves_no_row_and_still_reports_usage(site):
    before = (
        site.rows("SELECT count(*) FROM conversations_message"),
        site.rows("SELECT count(*) FROM conversations_conversation"),
    )
    completion = client(site, "unkept").chat.completions.create(
        model="chitchat", messages=QUESTION, temperature=0, max_tokens=10, extra_body={"ignore_eos": True}
    )
    assert completion.usage.completion_tokens == 10 and completion.usage.prompt_tokens > 0
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "length"
    streamed = client(site, "unkept").chat.completions.create(
        model="chitchat", messages=QUESTION, temperature=0, max_tokens=10, stream=True, extra_body={"ignore_eos": True}
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        == completion.choices[0].message.content
    )
    assert (
        site.rows("SELECT count(*) FROM conversations_message"),
        site.rows("SELECT count(*) FROM conversations_conversation"),
    ) == before


def test_closing_a_stream_stops_the_reply_and_it_is_stored_stopped_with_its_text(site):
    stream = client(site).chat.completions.create(
        model="chitchat", messages=QUESTION, stream=True, temperature=0, max_tokens=400, extra_body={"ignore_eos": True}
    )
    received = ""
    for chunk in stream:
        received += chunk.choices[0].delta.content or ""
        if len(received) > 20:
            break
    stream.close()
    conversation_id = stored_reply(site)[5]
    status, content = wait_for_status(site, conversation_id, {"stopped", "complete", "interrupted"})
    assert status == "stopped"
    assert content.startswith(received) and len(content) < 1200  # cut well before its 400 tokens


def test_past_the_limit_of_replies_at_once_a_call_waits_then_gets_429_and_nothing_is_stored(site):
    api = client(site)
    long = dict(
        model="chitchat", messages=QUESTION, stream=True, temperature=0, max_tokens=400, extra_body={"ignore_eos": True}
    )
    first, second = api.chat.completions.create(**long), client(site, "unkept").chat.completions.create(**long)
    try:
        next(iter(first)), next(iter(second))  # both are being written: the cap (2) is full
        before = site.rows("SELECT count(*) FROM conversations_message")
        for key in ("owner", "unkept"):
            with pytest.raises(openai.RateLimitError) as caught:
                client(site, key).chat.completions.create(model="chitchat", messages=QUESTION, **GREEDY)
            assert caught.value.status_code == 429 and caught.value.code == "too_many_replies"
            assert caught.value.response.headers["retry-after"] == "1"  # after waiting half a second for a place
        assert site.rows("SELECT count(*) FROM conversations_message") == before
    finally:
        first.close()
        second.close()
    wait_for_status(site, stored_reply(site)[5], {"stopped"})


def test_the_api_refuses_cookies_and_other_methods_in_openai_error_shape(site):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(site.webs[0].url + "/v1/chat/completions", method="GET")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 405 and json.loads(caught.value.read())["error"]["code"] == "method_not_allowed"
    request = urllib.request.Request(
        site.webs[0].url + "/v1/chat/completions",
        method="POST",
        data=json.dumps({"model": "chitchat", "messages": QUESTION}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 401
    body = json.loads(caught.value.read())["error"]
    assert body["type"] == "invalid_request_error" and body["code"] == "invalid_api_key"
    huge = json.dumps({"model": "chitchat", "messages": [{"role": "user", "content": "x" * 3_000_000}]}).encode()
    request = urllib.request.Request(
        site.webs[0].url + "/v1/chat/completions",
        method="POST",
        data=huge,
        headers={"Authorization": f"Bearer {site.keys['owner']}"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 413 and json.loads(caught.value.read())["error"]["code"] == "request_too_large"
