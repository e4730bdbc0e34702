"""The chat socket's frame parser and flood limits: whatever arrives, a Command or one ChatError."""

import json

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from conversations.chat.protocol import MAX_ID, TURNS, Bucket, Command, max_frame_chars, parse
from conversations.errors import ChatError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from([*TURNS, "stop", "sync", "dance"]) | json_values},
    optional={
        "content": json_values | st.text(),
        "message_id": json_values | st.integers(),
        "options": json_values,
        "models": json_values,
    },
)


def parse_or_refuse(text):
    try:
        return parse(text)
    except ChatError as exc:
        assert exc.code and exc.message
        assert json.dumps(exc.frame())  # always sendable
        return exc


@hypothesis_settings(max_examples=400, deadline=None)
@given(frames)
def test_any_json_frame_parses_to_a_command_or_a_clear_refusal(frame):
    result = parse_or_refuse(json.dumps(frame))
    if isinstance(result, Command):
        assert result.kind in (*TURNS, "stop", "sync")
        if result.turn is not None and result.turn.message_id is not None:
            assert 0 < result.turn.message_id <= MAX_ID
        if result.turn is not None and result.turn.content:
            result.turn.content.encode("utf-8")
            assert "\x00" not in result.turn.content


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_at_all_parses_or_is_refused(text):
    parse_or_refuse(text)


@pytest.mark.parametrize(
    "raw, code",
    [
        ("[" * 5000 + "]" * 5000, "bad_json"),  # deeper than the interpreter's recursion limit
        ('{"type": "send", "content": "half \\ud800 a pair"}', "invalid_text"),
        ('{"type": "send", "content": "nul \\u0000 inside"}', "invalid_text"),
        ('{"type": "regenerate", "message_id": 1e400}', "unknown_message"),
        ('{"type": "regenerate", "message_id": 99999999999999999999999}', "unknown_message"),
        ('{"type": "regenerate", "message_id": -3}', "unknown_message"),
        ('{"type": "regenerate", "message_id": true}', "unknown_message"),
        ('{"type": "send", "content": "hi", "options": [1]}', "invalid_options"),
        ('{"type": {"nested": "type"}}', "unknown_type"),
    ],
)
def test_hostile_frames_get_the_right_refusal(raw, code):
    with pytest.raises(ChatError) as refusal:
        parse(raw)
    assert refusal.value.code == code


def test_binary_frames_and_frames_past_the_size_limit_are_refused_unread(settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 100
    with pytest.raises(ChatError) as binary:
        parse(None, b"\x00\x01")
    assert binary.value.code == "bad_frame"
    with pytest.raises(ChatError) as huge:
        parse(json.dumps({"type": "send", "content": "x" * (max_frame_chars() + 1)}))
    assert huge.value.code == "frame_too_large"


def test_a_bucket_allows_its_burst_then_its_rate():
    now = [0.0]
    bucket = Bucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one more token
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 100
    assert sum(bucket.take() for _ in range(10)) == 3
