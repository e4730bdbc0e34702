"""Step-level batching on a real tiny Llama: replies decoded together are exactly the replies
decoded alone (greedy, token for token), whatever joins, leaves, stops or fails around them;
adapters mix in one batch; a conversation's next turn reuses its keys and values.

The worker is held at its gate (its model "loading") while a test submits requests, so
everything submitted before the gate opens is admitted into one batch."""

import pytest
import torch

from modelhub import api
from modelhub.engine.kv_reuse import PrefixCache
from modelhub.engine.request import Request
from modelhub.models import Adapter
from modelhub.options import ModelhubError
from tests.modelhub.served import PROMPTS, Served, ask, read


def alone(reference_models, messages, adapter=None, max_new_tokens=16, ignore_eos=False):
    """What `model.generate` answers for these messages on its own (greedy)."""
    tokenizer, models = reference_models
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]
    out = models[adapter].generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        min_new_tokens=max_new_tokens if ignore_eos else None,
        eos_token_id=tokenizer.eos_token_id,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_a_batch_of_greedy_requests_matches_each_request_run_alone(served, reference_models):
    requests = [served.start(ask(p)) for p in PROMPTS]
    served.open()

    texts = [read(r) for r in requests]

    assert texts == [alone(reference_models, ask(p)) for p in PROMPTS]
    assert served.backend.decoder.batch.peak == len(PROMPTS)
    assert len(set(texts)) > 1


def test_requests_for_different_adapters_share_a_batch_and_match_each_adapter_alone(
    served, reference_models, adapter_rows
):
    plan = [(PROMPTS[0], None), (PROMPTS[1], "alpha"), (PROMPTS[2], "beta"), (PROMPTS[0], "alpha"), (PROMPTS[3], None)]
    requests = [served.start(ask(p), adapter_rows.get(a)) for p, a in plan]
    served.open()

    texts = [read(r) for r in requests]

    assert texts == [alone(reference_models, ask(p), a) for p, a in plan]
    assert served.backend.decoder.batch.peak == len(plan)
    assert texts[0] != texts[3]  # same prompt, another adapter: the adapter really applies per row


def test_prompts_waiting_together_are_prefilled_in_one_pass(tiny_spec, reference_models):
    shapes = []
    served = Served(tiny_spec, hook=lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)))
    requests = [served.start(ask(p), max_new_tokens=16, ignore_eos=True) for p in PROMPTS]
    served.open()

    texts = [read(r) for r in requests]

    assert texts == [alone(reference_models, ask(p), ignore_eos=True) for p in PROMPTS]
    widest = max(r.usage.prompt_tokens for r in requests)
    assert shapes == [(len(PROMPTS), widest)] + [(len(PROMPTS), 1)] * 15  # one prefill pass, then 15 steps


def test_a_prompt_that_breaks_the_shared_prefill_fails_alone(tiny_spec, reference_models):
    tokenizer, _ = reference_models
    prompt_ids = [
        set(tokenizer.apply_chat_template(ask(p), add_generation_prompt=True)["input_ids"]) for p in PROMPTS[:3]
    ]
    poison = min(prompt_ids[2] - prompt_ids[0] - prompt_ids[1])  # a token only the third prompt has

    def hook(module, args, kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1 and (ids == poison).any():  # prefill passes holding the third prompt
            raise RuntimeError("kernel fell over")

    served = Served(tiny_spec, hook=hook)
    requests = [served.start(ask(p)) for p in PROMPTS[:3]]
    served.open()

    with pytest.raises(ModelhubError, match="kernel fell over"):
        read(requests[2])
    assert [read(r) for r in requests[:2]] == [alone(reference_models, ask(p)) for p in PROMPTS[:2]]


def test_a_request_that_joins_mid_batch_matches_its_solo_run(served, reference_models):
    long = [served.start(ask(p), max_new_tokens=60, ignore_eos=True) for p in PROMPTS[:2]]
    served.open()
    first = iter(long[0])
    head = [next(first) for _ in range(5)]  # the batch is decoding now
    late = served.start(ask(PROMPTS[2]), max_new_tokens=40, ignore_eos=True)

    texts = ["".join(head) + "".join(first), read(long[1]), read(late)]

    assert texts == [
        alone(reference_models, ask(PROMPTS[0]), max_new_tokens=60, ignore_eos=True),
        alone(reference_models, ask(PROMPTS[1]), max_new_tokens=60, ignore_eos=True),
        alone(reference_models, ask(PROMPTS[2]), max_new_tokens=40, ignore_eos=True),
    ]
    assert served.backend.decoder.batch.peak == 3


def test_stopping_one_request_leaves_the_others_unchanged(served, reference_models):
    requests = [served.start(ask(p), max_new_tokens=40, ignore_eos=True) for p in PROMPTS[:3]]
    served.open()
    stopped = iter(requests[1])
    next(stopped)
    requests[1].cancel()
    list(stopped)

    texts = [read(requests[0]), read(requests[2])]

    assert texts == [
        alone(reference_models, ask(p), max_new_tokens=40, ignore_eos=True) for p in (PROMPTS[0], PROMPTS[2])
    ]
    assert requests[1].usage.finish_reason == "cancelled"
    assert requests[1].usage.completion_tokens < 40
    assert [r.usage.completion_tokens for r in (requests[0], requests[2])] == [40, 40]


class FailingReader(Request):
    """A caller whose side breaks on its third chunk (a bug, a full queue)."""

    def emit(self, text, part="answer"):
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen == 3:
            raise RuntimeError("reader fell over")
        super().emit(text)


def test_an_exception_in_one_request_fails_only_that_request(served, reference_models, tiny_spec, tmp_path):
    broken = Adapter.objects.create(name="broken", base=tiny_spec, path=str(tmp_path / "not-an-adapter"))
    options = api.options_for(tiny_spec, {"temperature": 0, "max_new_tokens": 30, "ignore_eos": True})
    healthy = [served.start(ask(p), max_new_tokens=30, ignore_eos=True) for p in PROMPTS[:2]]
    failing = served.worker.submit(FailingReader(ask(PROMPTS[2]), options))
    served.open()
    bad_adapter = served.start(ask(PROMPTS[3]), broken)

    with pytest.raises(ModelhubError, match="reader fell over"):
        read(failing)
    with pytest.raises(ModelhubError, match="no adapter_config.json"):
        read(bad_adapter)
    assert [read(r) for r in healthy] == [
        alone(reference_models, ask(p), max_new_tokens=30, ignore_eos=True) for p in PROMPTS[:2]
    ]


def test_a_short_request_behind_long_ones_finishes_while_they_still_run(served):
    long = [served.start(ask(p), max_new_tokens=150, ignore_eos=True) for p in PROMPTS[:3]]
    served.open()
    next(iter(long[0]))  # the long ones are decoding

    short = served.start(ask(PROMPTS[3]), max_new_tokens=3, ignore_eos=True)
    read(short)

    assert short.usage.completion_tokens == 3
    assert all(r.usage is None for r in long)  # none of the long ones has finished
    for request in long:
        request.cancel()


def conversation_turns(served, count):
    """`count` turns of one conversation; each next prompt holds the previous turns and replies."""
    messages, usages = [], []
    for turn in range(count):
        messages.append({"role": "user", "content": PROMPTS[turn % len(PROMPTS)]})
        request = served.start(list(messages), max_new_tokens=8)
        messages.append({"role": "assistant", "content": read(request)})
        usages.append(request.usage)
    return messages, usages


def test_the_next_turn_reuses_the_last_turns_keys_and_values_and_answers_the_same(served, reference_models):
    served.open()
    messages, usages = conversation_turns(served, 4)

    assert usages[0].cached_prompt_tokens == 0
    for before, after in zip(usages, usages[1:]):
        assert after.cached_prompt_tokens >= before.prompt_tokens  # at least the whole last prompt is reused
    for turn in range(1, 4):  # each reply equals a fresh prefill of the whole history
        history = messages[: 2 * turn + 1]
        assert messages[2 * turn + 1]["content"] == alone(reference_models, history, max_new_tokens=8)


def test_a_regenerated_reply_reuses_the_prompt_and_repeats_itself(served):
    served.open()
    first = read(served.start(ask(PROMPTS[2])))
    again = served.start(ask(PROMPTS[2]))

    assert read(again) == first
    assert again.usage.cached_prompt_tokens == again.usage.prompt_tokens - 1


def test_a_prompt_prefilled_in_small_chunks_gives_the_same_reply(tiny_spec, reference_models):
    served = Served(tiny_spec, kv_cache_mb=0, prefill_chunk=16)
    messages = [{"role": "user", "content": " ".join(PROMPTS)}]
    request = served.start(messages)
    served.open()

    assert read(request) == alone(reference_models, messages)
    assert request.usage.prompt_tokens > 16 * 3


def test_a_seeded_sampled_reply_is_the_same_in_a_batch_and_alone(served):
    served.open()
    solo = read(served.start(ask(PROMPTS[0]), temperature=0.9, top_k=20, seed=7, max_new_tokens=24))
    crowd = [served.start(ask(p)) for p in PROMPTS[1:4]]
    batched = served.start(ask(PROMPTS[0]), temperature=0.9, top_k=20, seed=7, max_new_tokens=24)

    assert read(batched) == solo
    assert all(read(r) for r in crowd)


def test_the_prefix_cache_keeps_the_longest_match_within_its_budget():
    layer = lambda n: [(torch.zeros(1, 1, n, 4), torch.zeros(1, 1, n, 4))]  # 32 bytes per token per layer  # noqa: E731
    cache = PrefixCache(budget_bytes=32 * 25, min_tokens=2)
    cache.store("__base__", [1, 2, 3], layer(3))
    cache.store("__base__", [1, 2, 3, 4, 5], layer(5))  # extends the first: the first is dropped
    cache.store("alpha", [1, 2, 3, 4, 5, 6], layer(6))

    assert len(cache) == 2
    reused, layers = cache.lookup("__base__", [1, 2, 3, 4, 9, 9])
    assert reused == 4 and layers[0][0].shape[2] == 4
    assert cache.lookup("__base__", [7, 8]) == (0, None)
    assert cache.lookup("__base__", [1, 7, 8]) == (0, None)  # one token in common: not worth copying
    assert cache.lookup("__base__", [1, 2, 3, 4, 5])[0] == 4  # one prompt token is always left to feed

    cache.store("__base__", list(range(100, 115)), layer(15))  # over budget: the least recently used goes
    assert cache.bytes <= 32 * 25
    assert cache.lookup("alpha", [1, 2, 3, 4, 5, 6, 7]) == (0, None)
