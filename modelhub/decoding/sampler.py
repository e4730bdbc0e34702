"""How one step's logits become the next token, and tokens become text.

A causal LM gives, at every step, a distribution over the next token given
everything before it. `Sampler` turns one sequence's logits into its next token
with that request's own settings (greedy, or temperature / top-k / top-p with a
repetition penalty and an optional seed), using transformers' own logits
processors in the order `generate` applies them, so a reply decoded here matches
`model.generate` with the same settings. `Detokenizer` turns the tokens into text
as soon as it is stable.
"""

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


class Sampler:
    """Next-token choice for one sequence; `greedy` ones are picked in one argmax for the whole batch."""

    def __init__(self, options, eos_ids, device):
        self.eos_ids = list(eos_ids)
        self.min_tokens = options.max_new_tokens if options.ignore_eos else 0
        self.do_sample = options.temperature > 0
        self.penalty = options.repetition_penalty != 1.0
        self.processors = LogitsProcessorList()
        if self.penalty:
            self.processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
        if self.do_sample:
            self.processors.append(TemperatureLogitsWarper(options.temperature))
            if options.top_k:
                self.processors.append(TopKLogitsWarper(options.top_k))
            if options.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(options.top_p))
        self.generator = None
        if options.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(options.seed)

    @property
    def greedy(self):
        """Argmax of the logits (once the end-of-turn tokens are suppressed where `suppresses_eos`)."""
        return not self.do_sample and not self.penalty

    def suppresses_eos(self, generated):
        return generated < self.min_tokens and bool(self.eos_ids)

    def __call__(self, scores, context_ids, generated):
        """The next token from `scores` ([vocab]) after `context_ids` (prompt and reply so far)."""
        return self.choose(self.scores(scores, context_ids, generated))

    def scores(self, scores, context_ids, generated):
        """The scores the token is drawn from ([1, vocab]): the logits after the penalty and warpers."""
        scores = scores.unsqueeze(0).float()
        if self.suppresses_eos(generated):
            scores[:, self.eos_ids] = float("-inf")  # `ignore_eos`: always reach max_new_tokens
        if self.processors:
            ids = torch.tensor([context_ids], device=scores.device)
            scores = self.processors(ids, scores)
        return scores

    def choose(self, scores):
        if not self.do_sample:
            return int(scores.argmax(-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class Detokenizer:
    """Text from tokens, token by token, emitted as soon as it is stable.

    Decoding a token alone can be wrong (a leading space, half of a UTF-8 character),
    so each step decodes a short window of recent tokens and returns what it adds to
    the text already returned, holding back while the text ends in an incomplete
    character (the incremental detokenization used by TGI and vLLM).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens = []
        self.prefix = 0  # window start: tokens before it are settled
        self.read = 0  # tokens up to here have been returned as text

    def _decode(self, tokens):
        return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token):
        """The new stable text once `token` is appended ('' while it is held back)."""
        self.tokens.append(token)
        before = self._decode(self.tokens[self.prefix : self.read])
        after = self._decode(self.tokens[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.tokens)
            return after[len(before) :]
        return ""

    def flush(self):
        """Whatever was held back, at the end of the reply."""
        held = self._decode(self.tokens[self.prefix :])
        return held[len(self._decode(self.tokens[self.prefix : self.read])) :]
