"""Each sampled token's probability and its most likely alternatives, as the sampler saw them.

A causal LM gives at every step a distribution over the next token. With
`GenerationOptions.logprobs` set, a reply keeps, for each token it sampled, that
token's log-probability and the `logprobs` most likely tokens with theirs. They come
from the very scores the token was drawn from: after the repetition penalty,
temperature, top-k and top-p when the request samples (tokens those cut off have
probability 0 and are not listed), the model's own distribution when it is greedy.
So a token's probability is the chance it had of being the one written.

The rows of a decode step that keep them are scored together in one batched pass: a
greedy row's logits, a sampled row's scores as its sampler built them. Texts are found
once, when the reply ends (`TokenLogprobs.export`), so a decode step pays for a
log-sum-exp and a top-k only.

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
    """[(logprob of chosen[i], alt_ids, alt_logprobs) best first] for each row of `scores` [rows, vocab].

    A log-probability is a score minus the row's log-sum-exp: the top k and the chosen token are read
    from the scores, so no [rows, vocab] log-softmax is written out (it would double a step's cost here)."""
    scores = scores.float()
    total = torch.logsumexp(scores, dim=-1, keepdim=True)
    index = torch.tensor(chosen, device=scores.device).unsqueeze(1)
    picked = (scores.gather(1, index) - total).squeeze(1).tolist()
    if not k:
        return [(logprob, [], []) for logprob in picked]
    values, ids = scores.topk(min(k, scores.shape[-1]), dim=-1)
    return list(zip(picked, ids.tolist(), (values - total).tolist()))


class TokenLogprobs:
    """One reply's record, filled token by token while it decodes.

    Kept in flat lists of numbers and strings, which Python's garbage collector does not track: a
    container per token would make the collector's full passes (of a server's whole heap) more frequent."""

    def __init__(self, k):
        self.k = k
        self.tokens, self.texts, self.logprobs = [], [], []
        self.alt_ids, self.alt_logprobs, self.alt_counts = [], [], []

    def add(self, token, scored, text):
        logprob, alt_ids, alt_logprobs = scored
        kept = min(self.k, len(alt_ids))
        while kept and alt_logprobs[kept - 1] == -math.inf:  # cut off by top-k or top-p: no chance at all
            kept -= 1
        self.tokens.append(token)
        self.texts.append(text)
        self.logprobs.append(logprob)
        self.alt_ids.extend(alt_ids[:kept])
        self.alt_logprobs.extend(alt_logprobs[:kept])
        self.alt_counts.append(kept)

    def add_text(self, text):
        """Text the detokenizer held back until the reply ended belongs to the last token."""
        if self.texts and text:
            self.texts[-1] += text

    def export(self, tokenizer):
        """The JSON record (module docstring), alternatives' texts decoded in one batch.

        An alternative's text is what it would have added after the token before it (decoding it
        alone would drop a SentencePiece tokenizer's leading space)."""
        heads = [[]] + [[token] for token in self.tokens[:-1]]
        head_texts = _decode_batch(tokenizer, heads, skip_special_tokens=True)
        pairs, pair_heads, at = [], [], 0
        for head, head_text, count in zip(heads, head_texts, self.alt_counts):
            pairs += [head + [alt] for alt in self.alt_ids[at : at + count]]
            pair_heads += [head_text] * count
            at += count
        texts = added_texts(tokenizer, pairs, pair_heads, heads_decoded=True)
        record, at = [], 0
        for token, text, logprob, count in zip(self.tokens, self.texts, self.logprobs, self.alt_counts):
            alts = [[self.alt_ids[n], texts[n], round(self.alt_logprobs[n], DIGITS)] for n in range(at, at + count)]
            record.append([token, text, round(logprob, DIGITS), alts])
            at += count
        return record


def added_texts(tokenizer, pairs, alone, skip_special_tokens=True, heads_decoded=False):
    """For each [before..., alt]: the text `alt` adds after `before` (after the part of it that is whole
    characters: a token that completes a character `before` began shows that character). `alone`: each
    `before`, as ids, or already decoded (`heads_decoded`)."""
    if not pairs:
        return []
    full = _decode_batch(tokenizer, pairs, skip_special_tokens)
    heads = alone if heads_decoded else _decode_batch(tokenizer, alone, skip_special_tokens)
    heads = [h.rstrip("\ufffd") for h in heads]
    return [
        f[len(h) :] if f.startswith(h) else _decode_batch(tokenizer, [p[-1:]], skip_special_tokens)[0]
        for f, h, p in zip(full, heads, pairs)
    ]


def _decode_batch(tokenizer, sequences, skip_special_tokens):
    """Texts of many short id lists: in one call of the Rust tokenizer where there is one (transformers'
    batch_decode decodes them one by one), without clean-up of spaces, as the reply's text is decoded."""
    rust = getattr(tokenizer, "_tokenizer", None)
    if rust is not None and hasattr(rust, "decode_batch"):
        return rust.decode_batch(sequences, skip_special_tokens=skip_special_tokens)
    return tokenizer.batch_decode(
        sequences, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )
