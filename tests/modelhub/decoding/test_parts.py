"""A reply's parts (modelhub/decoding/parts.py): the tiny Qwen3 of tests/thinking.py, served by the real
engine, thinks then answers; its text splits into reasoning and answer as it streams, by TRL's qwen3
response template, however the text is cut into pieces."""

import pytest
from transformers import AutoTokenizer

from modelhub import api
from modelhub.backends.loading import attach_response_template
from modelhub.decoding.parts import ANSWER, REASONING, Parts
from tests.thinking import ANSWER as WORDS
from tests.thinking import CALL, QUESTION, WEATHER_QUESTION, WEATHER_TOOL, render
from tests.thinking import REASONING as THOUGHT

pytestmark = pytest.mark.django_db

REPLY = f"<think>\n{THOUGHT}\n</think>\n\n{WORDS}"


@pytest.fixture(scope="module")
def tokenizer(thinking_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(thinking_model_dir)
    attach_response_template(tokenizer, "auto")
    return tokenizer


def split(tokenizer, pieces, prompt):
    parts = Parts(tokenizer, prompt)
    out = {REASONING: "", ANSWER: ""}
    for piece in pieces:
        for part, text in parts.feed(piece):
            out[part] += text
    whole, rest = parts.finish()
    for part, text in rest:
        out[part] += text
    return out, whole


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_the_split_is_the_same_however_the_text_is_cut(tokenizer, size):
    prompt = render(tokenizer, [{"role": "user", "content": QUESTION}])
    streamed, whole = split(tokenizer, [REPLY[i : i + size] for i in range(0, len(REPLY), size)], prompt)
    assert streamed[REASONING].strip() == THOUGHT and streamed[ANSWER] == WORDS
    assert whole == {"reasoning": THOUGHT, "answer": WORDS}


def test_a_tool_call_is_parsed_and_never_handed_out_as_text(tokenizer):
    prompt = render(tokenizer, [{"role": "user", "content": WEATHER_QUESTION}], [WEATHER_TOOL])
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris"}}\n</tool_call>'
    streamed, whole = split(tokenizer, list(text), prompt)
    assert streamed == {REASONING: "", ANSWER: ""}
    assert whole["tool_calls"] == [{"type": "function", "function": CALL}]


BAD_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
GOOD_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris"}}\n</tool_call>'


@pytest.mark.parametrize(
    "text, calls",
    [
        (BAD_CALL, []),  # closed, but not JSON
        (BAD_CALL + "\nsorry.", []),  # and the reply goes on after it
        (GOOD_CALL + "\n" + BAD_CALL, [CALL]),  # a good call, then a bad one
        (GOOD_CALL + '\n<tool_call>\n{"name": "get_w', [CALL]),  # a good call, then one cut by the token limit
    ],
    ids=["not-json", "text-after", "good-then-bad", "good-then-cut"],
)
def test_a_tool_call_that_does_not_parse_is_handed_out_as_the_answer_with_a_warning(tokenizer, caplog, text, calls):
    prompt = render(tokenizer, [{"role": "user", "content": WEATHER_QUESTION}], [WEATHER_TOOL])
    streamed, whole = split(tokenizer, list(text), prompt)
    assert [call["function"] for call in whole.get("tool_calls", [])] == calls
    bad = text[len(GOOD_CALL) + 1 :] if calls else text
    assert streamed[ANSWER] == bad and streamed[REASONING] == ""
    assert "did not parse" in caplog.text


def test_a_reply_cut_mid_thought_keeps_what_it_thought(tokenizer):
    prompt = render(tokenizer, [{"role": "user", "content": QUESTION}])
    _, whole = split(tokenizer, ["<think>\ntwo and"], prompt)
    assert whole == {"reasoning": "two and"}


def test_a_tokenizer_whose_template_trl_does_not_know_has_one_part(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert attach_response_template(tokenizer, "auto") is None
    assert attach_response_template(tokenizer, "qwen3") is not None  # the admin may name one


def answer(spec, **options):
    request = api.start(spec, [{"role": "user", "content": QUESTION}], {"temperature": 0, **options})
    text = "".join(request)
    return text, request.usage


def test_the_engine_hands_out_the_answer_and_keeps_the_reasoning_apart(thinking_spec):
    text, usage = answer(thinking_spec)
    assert text == WORDS
    assert usage.reasoning == THOUGHT and 0 < usage.reasoning_tokens < usage.completion_tokens


def test_thinking_switched_off_goes_to_the_template(thinking_spec):
    text, usage = answer(thinking_spec, think=False)
    assert usage.prompt_text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert text == WORDS and usage.reasoning == "" and usage.reasoning_tokens == 0


def test_a_model_whose_admin_chose_no_parts_answers_with_its_raw_text(thinking_spec):
    thinking_spec.reply_parts = "none"
    thinking_spec.save()
    text, usage = answer(thinking_spec)
    assert text == REPLY and usage.reasoning == ""
