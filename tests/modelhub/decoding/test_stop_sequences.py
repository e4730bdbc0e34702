"""Stop strings (`stop`, as in the OpenAI API) on every backend: a reply ends before the first
stop string it would contain, and no piece of that string ever reaches the caller.

On the tiny random Llama, greedy: the reply without `stop` is T; with a stop string that
occurs in T, across several tokens (several streamed chunks), the reply is T cut right before
it, finish "stop", the same alone and in a batch, and its row leaves the batch that step. A
remote model sends `stop` to its server (a real HTTP server here; vLLM in tests/modelhub/test_vllm_live.py).
"""

import http.server
import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelhub import api
from modelhub.backends.loading import LoadSettings, load
from modelhub.backends.local import TransformersBackend
from modelhub.engine.request import Request
from modelhub.engine.worker import Worker
from modelhub.options import GenerationOptions, InvalidOptions
from tests.factories import install_scripted, remote_spec
from tests.live import http_server
from tests.modelhub.served import PROMPTS, Served, ask

PROMPT = ask(PROMPTS[2])
LONG = {"max_new_tokens": 24, "ignore_eos": True}  # no end-of-turn token: a reply not stopped ends "length"
NEVER = "\u2603"  # a snowman: the tiny model's byte-level vocabulary never writes it whole


def stop_across_chunks(chunks):
    """A stop string of T made of the end of one chunk, the whole next one and the start of the one
    after (so it spans at least three tokens), where it first occurs in T; and that position."""
    text = "".join(chunks)
    at = 0
    for i in range(1, len(chunks) - 2):
        at += len(chunks[i - 1])
        first, middle, last = chunks[i : i + 3]
        stop = first[-1] + middle + last[0]
        start = at + len(first) - 1
        if "\ufffd" not in stop and text.find(stop) == start and start > 0:
            return stop, start
    raise AssertionError(f"no stop string found across the chunks of {text!r}")


@pytest.fixture
def unstopped(served):
    """The chunks of the greedy reply to PROMPT without stop strings (T, as streamed)."""
    served.open()
    request = served.start(PROMPT, **LONG)
    chunks = list(request)
    assert request.usage.finish_reason == "length"
    return chunks


def test_a_reply_ends_right_before_a_stop_string_spanning_several_tokens(served, unstopped):
    text = "".join(unstopped)
    stop, start = stop_across_chunks(unstopped)

    request = served.start(PROMPT, stop=stop, **LONG)
    chunks = list(request)

    assert "".join(chunks) == text[:start]
    assert all(chunks)
    assert request.usage.finish_reason == "stop"
    assert request.usage.completion_tokens < LONG["max_new_tokens"]


def test_the_chunks_never_carry_a_piece_of_the_stop_string(served, unstopped):
    text = "".join(unstopped)
    stop, start = stop_across_chunks(unstopped)

    request = served.start(PROMPT, stop=[NEVER, stop], **LONG)
    so_far = ""
    for chunk in request:
        so_far += chunk
        assert text[:start].startswith(so_far)  # nothing passed on is ever taken back

    assert so_far == text[:start]
    assert request.usage.finish_reason == "stop"


def test_a_stop_string_that_never_completes_changes_nothing_but_when_text_is_passed_on(served, unstopped):
    text = "".join(unstopped)
    stop, start = stop_across_chunks(unstopped)
    almost = stop + NEVER  # its beginning occurs in T: that text is held back, then released
    assert almost not in text

    request = served.start(PROMPT, stop=almost, **LONG)
    chunks = list(request)

    assert "".join(chunks) == text
    assert chunks != unstopped  # the held text came later, in another chunk
    assert request.usage.finish_reason == "length"
    assert request.usage.completion_tokens == LONG["max_new_tokens"]


def test_a_stopped_reply_is_the_same_in_a_batch_as_alone_and_leaves_the_others_unchanged(tiny_spec):
    served = Served(tiny_spec)
    served.open()
    alone = {p: "".join(served.start(ask(p), **LONG)) for p in PROMPTS[:4]}
    stop, start = stop_across_chunks(list(served.start(PROMPT, **LONG)))
    alone_stopped = "".join(served.start(PROMPT, stop=stop, **LONG))

    batched = Served(tiny_spec)  # a fresh worker: everything below starts in one batch
    requests = [
        batched.start(ask(p), **LONG, stop=stop if p == PROMPTS[2] else NEVER if p == PROMPTS[0] else ())
        for p in PROMPTS[:4]
    ]
    batched.open()
    texts = ["".join(r) for r in requests]

    assert texts[2] == alone_stopped == alone[PROMPTS[2]][:start]
    assert [texts[i] for i in (0, 1, 3)] == [alone[PROMPTS[i]] for i in (0, 1, 3)]
    assert [r.usage.finish_reason for r in requests] == ["length", "length", "stop", "length"]
    assert batched.backend.decoder.batch.peak == 4


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return tokenizer, model


def reply_ids(reference, messages, max_new_tokens):
    tokenizer, model = reference
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


def stepped(worker, request):
    """Step the worker until `request` ended; its chunks, and the batch's size after each step."""
    chunks, rows = [], []
    while request.usage is None:
        worker.step()
        rows.append(len(worker.backend.decoder.batch.rows))
        chunks.extend(request.drain())
    return chunks, rows


def test_the_stopped_row_leaves_the_batch_in_the_step_that_wrote_the_stop_string(tiny_model_dir, reference):
    loaded = load(LoadSettings(str(tiny_model_dir), dtype="float32", device="cpu"))
    worker = Worker("stepped by the test", lambda progress: TransformersBackend(loaded), thread=False)
    options = GenerationOptions(temperature=0, **LONG)
    chunks, _ = stepped(worker, worker.submit(Request(PROMPT, options)))
    unstopped, (stop, start) = "".join(chunks), stop_across_chunks(chunks)
    ids = reply_ids(reference, PROMPT, LONG["max_new_tokens"])
    # Every token up to the one that completes the stop string counts, those of the stop string too.
    needed = next(k for k in range(1, len(ids) + 1) if stop in reference[0].decode(ids[:k], skip_special_tokens=True))

    stopped = worker.submit(Request(PROMPT, replace(options, stop=(stop,))))
    other = worker.submit(Request(ask(PROMPTS[0]), options))
    chunks, rows = stepped(worker, stopped)

    assert rows[0] == 2 and rows[-1] == 1  # it left the batch in the step that found the stop string
    assert [s.request for s in worker.scheduler.running] == [other]
    assert "".join(chunks) == unstopped[:start]
    assert (stopped.usage.finish_reason, stopped.usage.completion_tokens) == ("stop", needed)


def test_a_scripted_reply_stops_at_a_stop_string_split_across_its_chunks(db):
    spec, _ = install_scripted(chunks=["Hello", " Us", "er: ", "again"])

    request = api.start(spec, ask("hi"), {"stop": ["User:"]})
    chunks = list(request)

    assert chunks == ["Hello", " "]
    assert (request.usage.finish_reason, request.usage.completion_tokens) == ("stop", 3)


# --- options --------------------------------------------------------------------


@pytest.mark.parametrize(
    "stop, message",
    [
        (["a", "b", "c", "d", "e"], "stop takes at most 4 strings"),
        ([""], "each stop string must be 1 to 200 characters long"),
        ("", "each stop string must be 1 to 200 characters long"),
        (["x" * 201], "each stop string must be 1 to 200 characters long"),
        ([1], "stop must be a string or a list of strings"),
        (7, "stop must be a string or a list of strings"),
        ({"text": "x"}, "stop must be a string or a list of strings"),
    ],
)
def test_a_bad_stop_value_is_refused_saying_why(tiny_spec, stop, message):
    with pytest.raises(InvalidOptions) as caught:
        api.options_for(tiny_spec, {"stop": stop})
    assert caught.value.message == message
    assert GenerationOptions(stop=stop).problems(512) == {"stop": message}


def test_one_stop_string_is_a_list_of_one_and_stored_options_round_trip(tiny_spec):
    assert api.options_for(tiny_spec, {"stop": "###"}).stop == ("###",)
    assert api.options_for(tiny_spec, {"stop": None}).stop == ()
    options = api.options_for(tiny_spec, {"stop": ["\n\nUser:", "x" * 200, "a", "b"]})
    stored = json.loads(json.dumps(options.as_dict()))  # as a message's generation_options hold it

    assert stored["stop"] == ["\n\nUser:", "x" * 200, "a", "b"]
    assert api.options_for(tiny_spec, stored) == options
    older = {key: value for key, value in stored.items() if key != "stop"}  # saved before `stop` existed
    assert api.options_for(tiny_spec, older).stop == ()


# --- a remote server ------------------------------------------------------------


class _Completions(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that keeps each request's body and streams a short reply."""

    bodies = []

    def do_POST(self):
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        events = [
            {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
        ]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for event in [*map(json.dumps, events), "[DONE]"]:
            self.wfile.write(f"data: {event}\n\n".encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def completions_server():
    _Completions.bodies = []
    with http_server(_Completions) as url:
        yield url, _Completions.bodies


def test_a_remote_model_sends_the_stop_strings_to_its_server(db, completions_server):
    url, bodies = completions_server
    spec = remote_spec(url)

    stopped = api.start(spec, ask("hello"), {"max_new_tokens": 8, "stop": ["User:", "###"]})
    plain = api.start(spec, ask("hello"), {"max_new_tokens": 8})

    assert ["".join(stopped), "".join(plain)] == ["Hello", "Hello"]
    assert stopped.usage.finish_reason == "stop"
    assert sorted(body.get("stop", []) for body in bodies) == [[], ["User:", "###"]]
