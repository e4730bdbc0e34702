"""The reference for token probabilities: a separate forward pass over prompt + reply on freshly loaded
models (`reference_models` in tests/modelhub/conftest.py), scored as the sampler scored it."""

import math

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def expected(reference_models, messages, record, adapter=None, sampled=None):
    """[(token, logprob, [(alt, logprob)] top 5)] of a separate forward pass over prompt + the record's tokens."""
    tokenizer, models = reference_models
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"][0]
    tokens = [entry[0] for entry in record]
    ids = torch.cat([prompt, torch.tensor(tokens)]).unsqueeze(0)
    with torch.no_grad():
        logits = models[adapter](input_ids=ids).logits[0].float()
    processors = LogitsProcessorList()
    if sampled:  # in the order `generate` applies them
        processors += [
            TemperatureLogitsWarper(sampled["temperature"]),
            TopKLogitsWarper(sampled["top_k"]),
            TopPLogitsWarper(sampled["top_p"]),
        ]
    rows = []
    for n, token in enumerate(tokens):
        at = len(prompt) + n - 1  # the logits that predict token n
        scores = processors(ids[:, : at + 1], logits[at].unsqueeze(0))[0]
        logprobs = torch.log_softmax(scores, dim=-1)
        top = logprobs.topk(5)
        alts = [(i, lp) for i, lp in zip(top.indices.tolist(), top.values.tolist()) if math.isfinite(lp)]
        rows.append((token, logprobs[token].item(), alts))
    return rows


def assert_matches(record, rows):
    assert len(record) == len(rows) > 0
    for (token, _, logprob, alts), (ref_token, ref_logprob, ref_alts) in zip(record, rows):
        assert token == ref_token
        assert math.exp(logprob) == pytest.approx(math.exp(ref_logprob), abs=1e-4)
        assert [alt for alt, _, _ in alts] == [alt for alt, _ in ref_alts]
        for (_, _, lp), (_, ref_lp) in zip(alts, ref_alts):
            assert math.exp(lp) == pytest.approx(math.exp(ref_lp), abs=1e-4)
