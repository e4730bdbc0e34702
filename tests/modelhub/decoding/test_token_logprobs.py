"""Token probabilities on a real tiny Llama: what a reply keeps for each token equals a separate
forward pass over prompt + reply, scored as the sampler scored it (the model's own distribution
when greedy; after temperature, top-k and top-p when sampled), to 1e-4, batched or alone, with or
without an adapter."""

import pytest

from modelhub.engine.request import Request
from modelhub.options import GenerationOptions, InvalidOptions
from tests.modelhub.logprobs import assert_matches, expected
from tests.modelhub.served import PROMPTS, Served, ask, read

SAMPLED = {"temperature": 0.9, "top_k": 20, "top_p": 0.9, "seed": 7}


@pytest.fixture(autouse=True)
def switch_on(tiny_spec):
    """The model keeps token probabilities (api.options_for then asks for 5 alternatives a token)."""
    tiny_spec.token_probabilities = True
    tiny_spec.save()


def run(served, messages, adapter=None, **options):
    return served.start(messages, adapter, **options)


def test_a_greedy_replys_probabilities_equal_a_separate_forward_pass(served, reference_models):
    request = run(served, ask(PROMPTS[0]))
    served.open()
    text = read(request)

    record = request.usage.token_logprobs
    assert_matches(record, expected(reference_models, ask(PROMPTS[0]), record))
    assert "".join(entry[1] for entry in record) == text
    assert all(entry[0] == entry[3][0][0] for entry in record)  # greedy: each token is its step's likeliest
    assert len(record) == request.usage.completion_tokens


def test_a_sampled_replys_probabilities_are_those_after_temperature_top_k_and_top_p(served, reference_models):
    request = run(served, ask(PROMPTS[2]), max_new_tokens=24, **SAMPLED)
    served.open()
    read(request)

    record = request.usage.token_logprobs
    assert_matches(record, expected(reference_models, ask(PROMPTS[2]), record, sampled=SAMPLED))
    raw = expected(reference_models, ask(PROMPTS[2]), record)  # the model's own distribution: not what was kept
    assert any(abs(entry[2] - logprob) > 1e-3 for entry, (_, logprob, _) in zip(record, raw))


def test_probabilities_kept_in_a_batch_equal_those_kept_alone(tiny_spec, reference_models, adapter_rows):
    plan = [
        (PROMPTS[0], None, {}),
        (PROMPTS[1], "alpha", {}),
        (PROMPTS[3], None, SAMPLED),
        (PROMPTS[4], "beta", SAMPLED),
    ]
    served = Served(tiny_spec)
    together = [run(served, ask(p), adapter_rows.get(a), **o) for p, a, o in plan]
    plain = served.worker.submit(Request(ask(PROMPTS[5]), GenerationOptions(temperature=0, max_new_tokens=16)))
    # (a row that keeps nothing shares the batch: a request made without api.options_for)
    served.open()
    for request in together + [plain]:
        read(request)
    assert served.backend.decoder.batch.peak == len(plan) + 1

    for request, (prompt, adapter, options) in zip(together, plan):
        record = request.usage.token_logprobs
        assert_matches(record, expected(reference_models, ask(prompt), record, adapter, options or None))
    assert plain.usage.token_logprobs is None
    assert together[0].usage.token_logprobs != together[1].usage.token_logprobs  # the adapter applies

    alone = Served(tiny_spec)
    again = run(alone, ask(PROMPTS[1]), adapter_rows["alpha"])
    alone.open()
    read(again)
    assert [e[0] for e in again.usage.token_logprobs] == [e[0] for e in together[1].usage.token_logprobs]
    for mine, theirs in zip(again.usage.token_logprobs, together[1].usage.token_logprobs):
        assert mine[2] == pytest.approx(theirs[2], abs=1e-4)


def test_a_stop_string_keeps_every_sampled_tokens_probability(served, reference_models):
    first = run(served, ask(PROMPTS[0]), max_new_tokens=12)
    served.open()
    text = read(first)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    request = run(served, ask(PROMPTS[0]), max_new_tokens=12, stop=[stop])

    cut = read(request)

    record = request.usage.token_logprobs
    assert request.usage.finish_reason == "stop" and len(cut) < len(text)
    assert "".join(entry[1] for entry in record).startswith(cut + stop)
    assert_matches(record, expected(reference_models, ask(PROMPTS[0]), record))


def test_alternatives_read_as_the_text_they_would_have_added(served, reference_models):
    request = run(served, ask(PROMPTS[3]))
    served.open()
    read(request)
    tokenizer, _ = reference_models

    record = request.usage.token_logprobs
    for n, (_, _, _, alts) in enumerate(record[1:], start=1):
        before = record[n - 1][0]
        for alt, text, _ in alts:
            full = tokenizer.decode([before, alt], skip_special_tokens=True)
            settled = tokenizer.decode([before], skip_special_tokens=True).rstrip("\ufffd")  # whole characters
            assert full == settled + text


@pytest.mark.parametrize("value", [-1, 21, 2.5, "many", True])
def test_a_bad_logprobs_value_is_refused(value):
    with pytest.raises(InvalidOptions, match="logprobs"):
        GenerationOptions().merged({"logprobs": value}).validated(512)


def test_no_probabilities_are_kept_where_the_models_switch_is_off_whatever_the_caller_asks(served, tiny_spec):
    tiny_spec.token_probabilities = False
    tiny_spec.save()
    request = served.start(ask(PROMPTS[0]), logprobs=5)
    served.open()
    read(request)
    assert request.usage.token_logprobs is None
