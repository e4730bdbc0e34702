"""modelhub on a real tiny model: tokenizer -> chat template -> generate -> streamer."""

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelhub import api
from modelhub.backends.loading import LoadSettings, load
from modelhub.backends.local import ScriptedBackend
from modelhub.backends.standalone import stream_reply
from modelhub.models import ModelSpec
from modelhub.options import GenerationOptions, InvalidOptions, ModelhubError, ModelLoadError, PromptTooLong
from modelhub.prompts import build_prompt
from modelhub.registry import registry
from tests.waiting import until

HELLO = [{"role": "user", "content": "hello there, how are you doing today?"}]


def test_a_streamed_greedy_reply_matches_plain_generate_token_for_token(tiny_spec, tiny_model_dir):
    request = api.start(tiny_spec, HELLO, {"temperature": 0, "max_new_tokens": 24})
    chunks = list(request)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, return_tensors="pt")["input_ids"]
    expected = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    new_tokens = expected[0, ids.shape[1] :]

    assert len(chunks) > 1
    assert "".join(chunks) == tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert request.usage.prompt_tokens == ids.shape[1]
    assert request.usage.completion_tokens == len(new_tokens)
    assert request.usage.finish_reason in {"stop", "length"}
    assert 0 < request.usage.time_to_first_token <= request.usage.duration


def test_cancel_stops_generation_within_one_decode_step(tiny_model_dir):
    loaded = load(LoadSettings(str(tiny_model_dir), dtype="float32", device="cpu"))
    checks = []

    def cancelled_after_five_steps():
        checks.append(1)
        return len(checks) > 5

    options = GenerationOptions(temperature=0.8, max_new_tokens=200, seed=1)
    usage = stream_reply(loaded, HELLO, options, lambda text: None, cancelled_after_five_steps)

    assert usage.finish_reason == "cancelled"
    assert usage.completion_tokens == 6  # the step that saw the flag still emitted its token


def test_a_cancelled_request_ends_early_and_says_so(tiny_spec):
    request = api.start(tiny_spec, HELLO, {"temperature": 0.8, "max_new_tokens": 200, "seed": 1})
    iterator = iter(request)
    next(iterator)
    request.cancel()
    list(iterator)
    assert request.usage.finish_reason == "cancelled"
    assert request.usage.completion_tokens < 200


def test_requests_for_one_model_share_one_worker_and_one_load(tiny_spec):
    first = registry.worker(tiny_spec)
    second = registry.worker(tiny_spec)
    assert first is second
    results = []

    def chat():
        results.append("".join(api.start(tiny_spec, HELLO, {"temperature": 0, "max_new_tokens": 8})))

    threads = [threading.Thread(target=chat) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 3


def test_a_long_history_is_cut_from_the_oldest_turns_keeping_the_system_prompt(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    system = {"role": "system", "content": "be nice"}
    turns = []
    for i in range(30):
        turns.append({"role": "user", "content": f"question {i} about hiking and books"})
        turns.append({"role": "assistant", "content": f"answer {i} about the weekend"})
    turns.append({"role": "user", "content": "last question"})

    ids, cut = build_prompt(tokenizer, [system, *turns], context_length=120, max_new_tokens=20)

    assert cut > 0 and cut % 2 == 0  # whole exchanges, so the kept history starts with a user turn
    assert len(ids) <= 100
    text = tokenizer.decode(ids)
    assert text.startswith("<|system|>be nice<|end|><|user|>")
    assert "last question" in text
    kept = tokenizer.apply_chat_template([system, *turns[cut:]], add_generation_prompt=True, tokenize=False)
    assert text == kept


def test_a_last_message_longer_than_the_context_is_a_clear_error(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(PromptTooLong, match="context window of 64 tokens"):
        build_prompt(tokenizer, [{"role": "user", "content": "hello there " * 100}], 64, 16)


def test_a_history_with_nothing_to_answer_is_a_clear_error_not_an_index_error(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for history in ([], [{"role": "system", "content": "Be brief."}]):
        with pytest.raises(ModelhubError, match="nothing to answer") as caught:
            build_prompt(tokenizer, history, 64, 16)
        assert caught.value.code == "empty_prompt"


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"temperature": -1}, "temperature must be between 0 and 2"),
        ({"max_new_tokens": 0}, "max_new_tokens must be between 1"),
        ({"top_p": 0}, "top_p must be in"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"beam_width": 3}, "unknown option"),
    ],
)
def test_bad_generation_options_are_refused_before_anything_runs(tiny_spec, overrides, problem):
    with pytest.raises(InvalidOptions, match=problem):
        api.start(tiny_spec, HELLO, overrides)
    assert registry.status() == {}


def test_a_missing_model_folder_fails_its_requests_with_a_load_error(db, tmp_path):
    spec = ModelSpec.objects.create(name="missing", source=str(tmp_path / "nope"), device="cpu")
    with pytest.raises(ModelLoadError, match="nope does not exist"):
        list(api.start(spec, HELLO))
    assert registry.status()["missing"]["state"] == "failed"


def test_a_failing_request_does_not_break_the_next_one(db):
    spec = ModelSpec.objects.create(name="flaky", backend="scripted", source="-")
    backend = ScriptedBackend(chunks=["a", RuntimeError("CUDA fell over")])
    registry.install("flaky", backend)
    with pytest.raises(ModelhubError, match="generation failed: CUDA fell over") as failure:
        list(api.start(spec, HELLO))
    assert failure.value.code == "generation_failed"
    backend.chunks = ["still", " here"]
    assert "".join(api.start(spec, HELLO)) == "still here"


def test_unknown_and_default_models_are_resolved_by_name(tiny_spec):
    assert api.get_spec() == tiny_spec
    assert api.get_spec("tiny") == tiny_spec
    with pytest.raises(ModelhubError, match="no enabled model named 'gpt-9'"):
        api.get_spec("gpt-9")


def test_ignore_eos_generates_exactly_max_new_tokens(tiny_spec):
    request = api.start(tiny_spec, HELLO, {"temperature": 0, "max_new_tokens": 40, "ignore_eos": True})
    list(request)
    assert request.usage.completion_tokens == 40 and request.usage.finish_reason == "length"


def test_generation_options_merge_casts_and_validates():
    options = GenerationOptions().merged({"temperature": "0", "max_new_tokens": "12"}).validated(100)
    assert options.temperature == 0.0 and options.max_new_tokens == 12
    with pytest.raises(InvalidOptions):
        GenerationOptions(max_new_tokens=500).validated(100)
    with pytest.raises(InvalidOptions, match="whole number"):
        GenerationOptions().merged({"max_new_tokens": 1.5})
    with pytest.raises(InvalidOptions, match="ignore_eos must be true or false"):
        GenerationOptions().merged({"ignore_eos": "yes"})


async def test_text_that_arrived_before_a_failure_reaches_the_async_reader_first(transactional_db):
    spec = await ModelSpec.objects.acreate(name="failing", backend="scripted", source="-")
    registry.install("failing", ScriptedBackend(chunks=["kept ", "too ", RuntimeError("boom")]))
    request = api.start(spec, HELLO)
    await until(lambda: len(request._items) == 3)  # both chunks and the error arrived: they are read together
    received = []
    with pytest.raises(ModelhubError, match="boom"):
        async for text in request.chunks():
            received.append(text)
    assert received == ["kept too "]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_load_error(tiny_spec, settings):
    settings.MODELHUB_DEVICE = "cuda"
    tiny_spec.device = "auto"
    tiny_spec.save()
    with pytest.raises(ModelLoadError, match="no CUDA GPU is available"):
        list(api.start(tiny_spec, HELLO))


async def test_a_minimum_interval_coalesces_chunks_into_fewer_frames(transactional_db):
    spec = await ModelSpec.objects.acreate(name="chatty", backend="scripted", source="-")
    registry.install("chatty", ScriptedBackend(chunks=[f"t{i} " for i in range(20)], delay=0.01))
    every = [text async for text in api.start(spec, HELLO).chunks()]
    coalesced = [text async for text in api.start(spec, HELLO).chunks(min_interval=0.05)]
    assert "".join(every) == "".join(coalesced) == "".join(f"t{i} " for i in range(20))
    assert len(every) >= 15 and len(coalesced) <= 8
    assert coalesced[0] == "t0 "  # the first chunk is not held back


def test_a_registered_scripted_model_echoes_with_the_delay_its_source_sets(db):
    spec = ModelSpec.objects.create(name="echo", backend="scripted", source="echo delay=0.01")
    request = api.start(spec, [{"role": "user", "content": "one two three"}])
    assert list(request) == ["one", " two", " three"]
    assert request.usage.duration >= 0.03
    broken = ModelSpec.objects.create(name="broken-echo", backend="scripted", source="echo delay=soon")
    with pytest.raises(ModelLoadError, match="delay must be a number"):
        list(api.start(broken, HELLO))


def test_a_reservation_holds_a_place_until_it_starts_or_is_released_once(db):
    from modelhub.engine.arrivals import arrivals
    from modelhub.models import Adapter

    spec = ModelSpec.objects.create(name="echoing", backend="scripted", source="-")
    other = ModelSpec.objects.create(name="other", backend="scripted", source="-")
    registry.install("echoing", ScriptedBackend(chunks=["ok"]))

    started = api.reserve()
    assert len(arrivals) == 1  # running replies would hold their next step for it
    assert "".join(started.start(spec, HELLO)) == "ok"
    started.release()  # settled already: nothing more happens
    assert len(arrivals) == 0

    refused = api.reserve()
    refused.release()
    refused.release()
    assert len(arrivals) == 0

    failing = api.reserve()  # a start that raises settles it too
    foreign = Adapter.objects.create(name="foreign", base=other, path="/adapters/foreign")
    with pytest.raises(ModelhubError, match="belongs to"):
        failing.start(spec, HELLO, adapter=foreign)
    assert len(arrivals) == 0
