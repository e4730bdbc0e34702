"""Reasoning, tool calls and structured output through the API, live: a real daphne serving the tiny
Qwen3 of tests/thinking.py (TRL's qwen3 template and response template) on the real engine, asked by the
official `openai` client. The reasoning comes apart from the answer (`reasoning`, vLLM's field), a tool
call comes back as `tool_calls` (whole, and as streamed deltas), its result goes back as a `tool`
message; `tool_choice: required` and a `json_schema` are enforced by the grammar in the batch, and
`chat.completions.parse()` with a Pydantic model gets a parsed answer. A kept call's conversation
stores the calls and results as its messages."""

import json

import jsonschema
import openai
import pydantic
import pytest

from tests.live import SHELL_PRELUDE, Site
from tests.thinking import (
    ANSWER,
    CALL,
    QUESTION,
    REASONING,
    TOOL_RESULT,
    WEATHER_ANSWER,
    WEATHER_QUESTION,
    WEATHER_REASONING,
    WEATHER_TOOL,
)

pytestmark = [pytest.mark.slow, pytest.mark.live]

SETUP = (
    SHELL_PRELUDE
    + """
from conversations.models import ApiKey
from modelhub.models import ModelSpec
ModelSpec.objects.create(name="thinker", source={source!r}, dtype="float32", is_default=True, temperature=0,
                         max_new_tokens=96)
owner = User.objects.create_user("owner", password="live-pass-123")
print(json.dumps({{"kept": ApiKey.objects.issue(owner, "agent")[1],
                   "unkept": ApiKey.objects.issue(owner, "script", keep_calls=False)[1]}}))
"""
)
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 12}},
    "required": ["answer"],
    "additionalProperties": False,
}


class Answer(pydantic.BaseModel):
    answer: str = pydantic.Field(max_length=12)


@pytest.fixture(scope="module")
def site(tmp_path_factory, thinking_model_dir):
    site = Site(tmp_path_factory.mktemp("tools"))
    try:
        site.keys = site.setup(SETUP.format(source=str(thinking_model_dir)))
        site.web = site.server()
        yield site
        assert "Traceback" not in site.web.log
    finally:
        site.close()


def client_of(site, key):
    return openai.OpenAI(base_url=site.web.url + "/v1", api_key=site.keys[key], max_retries=0, timeout=120)


@pytest.fixture
def client(site):
    return client_of(site, "kept")


def ask(client, content=QUESTION, **fields):
    return client.chat.completions.create(model="thinker", messages=[{"role": "user", "content": content}], **fields)


@pytest.mark.parametrize("key", ["kept", "unkept"])
def test_the_reasoning_comes_apart_from_the_answer(site, key):
    client = client_of(site, key)
    message = ask(client).choices[0].message
    assert message.content == ANSWER
    assert message.model_extra["reasoning"] == REASONING


def test_the_reasoning_streams_as_its_own_deltas(client):
    deltas = [chunk.choices[0].delta for chunk in ask(client, stream=True) if chunk.choices]
    assert "".join(d.model_extra.get("reasoning") or "" for d in deltas).strip() == REASONING
    assert "".join(d.content or "" for d in deltas) == ANSWER


def test_a_tool_call_comes_back_and_its_result_gets_the_answer(client):
    choice = ask(client, WEATHER_QUESTION, tools=[WEATHER_TOOL]).choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (CALL["name"], CALL["arguments"])

    messages = [
        {"role": "user", "content": WEATHER_QUESTION},
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT},
    ]
    answer = client.chat.completions.create(model="thinker", messages=messages, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == WEATHER_ANSWER
    assert answer.choices[0].message.model_extra["reasoning"] == WEATHER_REASONING


@pytest.mark.parametrize("key", ["kept", "unkept"])
def test_a_streamed_tool_call_comes_as_openais_deltas(site, key):
    client = client_of(site, key)
    chunks = list(ask(client, WEATHER_QUESTION, tools=[WEATHER_TOOL], stream=True))
    calls = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or ()]
    assert [(c.index, c.type, c.function.name) for c in calls] == [(0, "function", CALL["name"])]
    assert calls[0].id.startswith("call_") and json.loads(calls[0].function.arguments) == CALL["arguments"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_a_required_tool_call_is_made_even_where_the_model_would_answer(client):
    choice = ask(client, tools=[WEATHER_TOOL], tool_choice="required").choices[0]
    assert choice.finish_reason == "tool_calls"
    for call in choice.message.tool_calls:
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])


def test_a_json_schema_answer_validates(client):
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
    message = ask(client, response_format=schema).choices[0].message
    jsonschema.validate(json.loads(message.content), SCHEMA)
    assert message.model_extra["reasoning"] == REASONING  # it thought first, freely; then the grammar held


def test_the_clients_parse_with_a_pydantic_model_gets_an_instance(client):
    completion = client.chat.completions.parse(
        model="thinker", messages=[{"role": "user", "content": QUESTION}], response_format=Answer
    )
    assert isinstance(completion.choices[0].message.parsed, Answer)


def test_a_kept_calls_conversation_stores_the_calls_and_results_as_messages(site):
    client = client_of(site, "kept")
    call = ask(client, WEATHER_QUESTION, tools=[WEATHER_TOOL]).choices[0].message.tool_calls[0]
    client.chat.completions.create(
        model="thinker",
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": WEATHER_QUESTION},
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT},
        ],
    )
    rows = site.rows(
        "SELECT role, content, reasoning, tool_calls, tool_call_id FROM conversations_message "
        "WHERE conversation_id = (SELECT MAX(id) FROM conversations_conversation) ORDER BY id"
    )
    roles = [row[0] for row in rows]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert json.loads(rows[1][3])[0]["id"] == call.id and rows[2][4] == call.id and rows[2][1] == TOOL_RESULT
    assert (rows[3][1], rows[3][2]) == (WEATHER_ANSWER, WEATHER_REASONING)


def test_a_bad_schema_is_a_400_naming_the_field(client):
    bad = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"$ref": "#/nowhere"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, response_format=bad)
    assert caught.value.body["param"] == "response_format.json_schema.schema"
