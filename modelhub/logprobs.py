"""Each sampled token's probability and its most likely alternatives, as the sampler saw them.

A causal LM gives at every step a distribution over the next token. With
`GenerationOptions.logprobs` set, a reply keeps, for each token it sampled, that
token's log-probability and the `logprobs` most likely tokens with theirs. They come
from the very scores the token was drawn from: after the repetition penalty,
temperature, top-k and top-p when the request samples (tokens those cut off have
probability 0 and are not listed), the model's own distribution when it is greedy.
So a token's probability is the chance it had of being the one written.

The rows of a decode step that keep them are scored together in one batched pass: a
greedy row's logits, a sampled row's scores as its sampler built them. Texts are found once, when the reply ends
(`TokenLogprobs.export`), so a decode step pays for a softmax and a top-k only.

The record, a plain JSON list stored with the message (Usage.token_logprobs):
    [[token_id, text, logprob, [[alt_id, alt_text, alt_logprob], ...]], ...]
one entry per sampled token, the end-of-turn token included (its text is "").
`text` is what the token added to the reply; joined, they are the reply's text
(before a stop string is cut off).
"""

import math

import torch

DIGITS = 5  # log-probabilities are stored to 1e-5: a probability then differs by less than 1e-5


def score(scores, chosen, k):
    """[(logprob of chosen[i], [(alt_id, alt_logprob)] best first)] for each row of `scores` [rows, vocab].

    A log-probability is a score minus the row's log-sum-exp: the top k and the chosen token are read
    from the scores, so no [rows, vocab] log-softmax is written out (it would double a step's cost here)."""
    scores = scores.float()
    total = torch.logsumexp(scores, dim=-1, keepdim=True)
    index = torch.tensor(chosen, device=scores.device).unsqueeze(1)
    picked = (scores.gather(1, index) - total).squeeze(1).tolist()
    if not k:
        return [(logprob, []) for logprob in picked]
    values, ids = scores.topk(min(k, scores.shape[-1]), dim=-1)
    values = (values - total).tolist()
    return [(logprob, list(zip(row_ids, row_values))) for logprob, row_ids, row_values in zip(picked, ids.tolist(), values)]


class TokenLogprobs:
    """One reply's record, filled token by token while it decodes."""

    def __init__(self, k):
        self.k = k
        self.entries = []  # [token, text, logprob, [(alt_id, alt_logprob)]]

    def add(self, token, scored, text):
        logprob, top = scored
        self.entries.append([token, text, logprob, [(i, lp) for i, lp in top if math.isfinite(lp)]])

    def add_text(self, text):
        """Text the detokenizer held back until the reply ended belongs to the last token."""
        if self.entries and text:
            self.entries[-1][1] += text

    def export(self, tokenizer):
        """The JSON record (module docstring), alternatives' texts decoded in one batch.

        An alternative's text is what it would have added after the token before it (decoding it
        alone would drop a SentencePiece tokenizer's leading space)."""
        pairs, heads = [], []
        for n, (_, _, _, top) in enumerate(self.entries):
            before = [self.entries[n - 1][0]] if n else []
            pairs += [before + [alt] for alt, _ in top]
            heads.append(before)
        head_texts = _decode_batch(tokenizer, heads, skip_special_tokens=True)
        texts = iter(added_texts(tokenizer, pairs, [head for head, (*_, top) in zip(head_texts, self.entries)
                                                    for _ in top], heads_decoded=True))
        return [[token, text, round(logprob, DIGITS), [[alt, next(texts), round(lp, DIGITS)] for alt, lp in top]]
                for token, text, logprob, top in self.entries]


def added_texts(tokenizer, pairs, alone, skip_special_tokens=True, heads_decoded=False):
    """For each [before..., alt]: the text `alt` adds after `before` (after the part of it that is whole
    characters: a token that completes a character `before` began shows that character). `alone`: each
    `before`, as ids, or already decoded (`heads_decoded`)."""
    if not pairs:
        return []
    full = _decode_batch(tokenizer, pairs, skip_special_tokens)
    heads = alone if heads_decoded else _decode_batch(tokenizer, alone, skip_special_tokens)
    heads = [h.rstrip("\ufffd") for h in heads]
    return [f[len(h):] if f.startswith(h) else _decode_batch(tokenizer, [p[-1:]], skip_special_tokens)[0]
            for f, h, p in zip(full, heads, pairs)]


def _decode_batch(tokenizer, sequences, skip_special_tokens):
    """Texts of many short id lists: in one call of the Rust tokenizer where there is one (transformers'
    batch_decode decodes them one by one), without clean-up of spaces, as the reply's text is decoded."""
    rust = getattr(tokenizer, "_tokenizer", None)
    if rust is not None and hasattr(rust, "decode_batch"):
        return rust.decode_batch(sequences, skip_special_tokens=skip_special_tokens)
    return tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens,
                                  clean_up_tokenization_spaces=False)
