"""What `/v1/chat/completions` accepts, read before anything is saved (openai_api/requests.py), and the
shapes it answers in. The whole path through a real server and the official client is in
test_openai_api_live.py; these are the request's edge cases, fast, on a scripted model."""

import json

import pytest

from conversations.models import ApiKey
from conversations.openai_api import shapes
from conversations.openai_api.requests import ApiError, read
from modelhub.models import Adapter, ModelSpec
from tests.factories import install_scripted
from tests.thinking import CALL, WEATHER_TOOL

CALLED = {"role": "assistant", "tool_calls": [{"id": "call_x", "type": "function", "function": {"name": CALL["name"]}}]}


@pytest.fixture
def key(owner):
    install_scripted()
    return ApiKey.objects.issue(owner, "tests")[0]


def body(**fields):
    return json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def refusal(raw, key):
    with pytest.raises(ApiError) as caught:
        read(raw, key)
    return caught.value


def test_it_reads_options_by_chatsite_names_and_max_completion_tokens_wins(key):
    call = read(body(temperature=0, top_p=0.5, max_tokens=9, max_completion_tokens=7, seed=3, stop="\n\n"), key)
    assert call.overrides == {"temperature": 0, "top_p": 0.5, "max_new_tokens": 7, "seed": 3, "stop": "\n\n"}
    assert (call.model, call.spec.name, call.adapter, call.stream) == ("scripted", "scripted", None, False)


def test_system_and_developer_messages_come_first_and_text_parts_are_joined(key):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]},
    ]
    assert read(body(messages=messages), key).messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "one two"},
    ]


@pytest.mark.parametrize(
    "fields, param, status",
    [
        ({"messages": []}, "messages", 400),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]}, "messages[1]", 400),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages", 400),
        ({"messages": [{"role": "tool", "content": "a"}]}, "messages[0].tool_call_id", 400),
        ({"messages": [{"role": "tool", "content": "a", "tool_call_id": "call_x"}]}, "messages[0].tool_call_id", 400),
        (
            {"messages": [CALLED, {"role": "tool", "content": "a", "tool_call_id": "call_y"}]},
            "messages[1].tool_call_id",
            400,
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]},
            "messages[0].tool_calls[0].function.name",
            400,
        ),
        ({"messages": [{"role": "assistant", "tool_calls": "x"}]}, "messages[0].tool_calls", 400),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0]",
            400,
        ),
        ({"n": 3}, "n", 400),
        ({"tools": [{"type": "function"}]}, "tools[0]", 400),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name", 400),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools[1].function.name", 400),
        ({"tools": [WEATHER_TOOL], "tool_choice": "always"}, "tool_choice", 400),
        ({"tool_choice": "required"}, "tool_choice", 400),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "tool_choice",
            400,
        ),
        ({"response_format": {"type": "xml"}}, "response_format", 400),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "nonsense"}}}},
            "response_format.json_schema.schema",
            400,
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"$ref": "#/nowhere"}}}},
            "response_format.json_schema.schema",
            400,
        ),
        ({"functions": [{"name": "f"}]}, "functions", 400),
        ({"logprobs": True}, "logprobs", 400),
        ({"temperature": "hot"}, "temperature", 400),
        ({"temperature": True}, "temperature", 400),
        ({"top_p": 0}, "top_p", 400),
        ({"max_tokens": 10**9}, "max_tokens", 400),
        ({"stop": ["", "x"]}, "stop", 400),
        ({"stream": "yes"}, "stream", 400),
        ({"stream_options": {"include_usage": True}}, "stream_options", 400),
        ({"model": "nope"}, "model", 404),
        ({"model": "scripted:nope"}, "model", 404),
    ],
)
def test_a_bad_field_is_refused_naming_it_with_its_status(key, fields, param, status):
    error = refusal(body(**fields), key)
    assert (error.param, error.status) == (param, status), error.message
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_tools_their_calls_and_results_and_a_json_schema_are_read_as_the_template_takes_them(key):
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "ask the tool",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True}}
    call = read(body(messages=messages, tools=[WEATHER_TOOL], tool_choice="required", response_format=schema), key)
    assert call.messages[1] == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "ask the tool",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
    }
    assert call.messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert call.overrides == {
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": True,
        "response_format": schema,
    }


def test_an_empty_tool_list_and_a_text_format_ask_for_nothing(key):
    assert read(body(tools=[], response_format={"type": "text"}), key).overrides == {}


def test_a_body_that_is_not_a_json_object_is_a_400(key):
    assert refusal(b"{not json", key).code == "invalid_json"
    assert refusal(b"[1, 2]", key).code == "invalid_json"


def test_an_adapter_is_named_after_its_model_and_a_disabled_one_is_unknown(key):
    spec = ModelSpec.objects.get(name="scripted")
    Adapter.objects.create(base=spec, name="tone", path="/nowhere")
    Adapter.objects.create(base=spec, name="off", path="/nowhere", enabled=False)
    assert read(body(model="scripted:tone"), key).adapter.name == "tone"
    assert refusal(body(model="scripted:off"), key).status == 404


def test_a_staff_only_model_is_404_for_a_user_and_usable_by_staff(key, staff):
    ModelSpec.objects.filter(name="scripted").update(visibility=ModelSpec.Visibility.STAFF)
    assert refusal(body(), key).code == "model_not_found"
    assert read(body(), ApiKey.objects.issue(staff, "staff")[0]).spec.name == "scripted"


def test_chunks_carry_one_id_and_the_last_one_the_usage_when_asked():
    completion = shapes.Completion("m", include_usage=True)
    events = [completion.first(), completion.text("hi"), completion.last("length", 3, 1)]
    datas = [line[len("data: ") :] for event in events for line in event.split("\n\n") if line]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(data) for data in datas[:-1]]
    assert {chunk["id"] for chunk in chunks} == {completion.id}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [None, None, "length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "total_tokens": 4,
    }
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
