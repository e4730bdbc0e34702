"""The model runner: step-level batching, replies on one model decoding together.

`Decoder` runs what the scheduler (scheduler.py) decided for a step, and decides
nothing itself: it opens a sequence, runs the prefill passes it is given, runs one
decode step for every running row, and releases a sequence that left.

Each request becomes a `Sequence` (sequence.py). Its prompt is prefilled into a KV cache of its
own, starting from the longest stored prefix of earlier turns when there is one
(kv_reuse.py). New prompts the scheduler puts together go through the model in one
left-padded pass; a prompt alone (one that continues a stored prefix, or is longer
than the step's budget) goes a chunk at a time. Then it joins the `Batch` (batch.py):
one KV cache for every running sequence, in buffers allocated ahead and written in
place, left-padded to a common length, with an attention mask that hides the padding
and position ids that count only each row's real tokens, so a row computes exactly
what it would compute alone. Every decode step
feeds each row its last token and samples its next one with that request's own
settings; a request that keeps token probabilities gets them from the same scores
(logprobs.py: every row that keeps them, scored together in one batched pass). A finished, stopped or
failed sequence leaves between steps; the other
rows' keys, values, mask and positions are untouched. A forward pass that fails (an
exception in the model, out of memory) fails the rows it was computing: their
half-written caches are dropped, and after running out of memory the stored
prefixes and the CUDA allocator's spare blocks are freed too, so the model goes on
serving the next requests.

Rows may name different LoRA adapters of the shared base: peft's `adapter_names`
applies each row's adapter within one forward pass ("__base__" for none).
Only the model's worker thread uses these objects.
"""

import logging
import time

import torch
from transformers import DynamicCache

from modelhub.decoding import grammar
from modelhub.decoding.logprobs import score
from modelhub.decoding.parts import Parts
from modelhub.decoding.sampler import Detokenizer, Sampler
from modelhub.engine.batch import Batch
from modelhub.engine.sequence import Sequence
from modelhub.options import InvalidOptions, ModelhubError
from modelhub.prompts import fit_prompt, template_hash

log = logging.getLogger(__name__)


class Decoder:
    """The model runner: opens, prefills, decodes and releases sequences on one loaded model."""

    def __init__(self, loaded, prefix_cache=None, prefill_chunk=512):
        self.loaded = loaded
        self.prefix_cache = prefix_cache
        self.prefill_chunk = prefill_chunk
        self.batch = Batch()
        eos = loaded.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = sorted(set(eos) | ({loaded.tokenizer.eos_token_id} - {None}))
        self.template_hash = template_hash(loaded.tokenizer)  # the template every prompt here is rendered with
        self._ll = None  # the grammar library's tokenizer, made when a reply first needs a grammar

    def open(self, messages, options, adapter=None, started=None):
        """A new sequence for this reply, its prompt built and matched against stored prefixes."""
        loaded = self.loaded
        tokenizer = loaded.tokenizer
        tools = options.tools if options.calls_tools else None
        prompt = fit_prompt(tokenizer, messages, loaded.context_length, options.max_new_tokens, options.think, tools)
        prompt_ids = prompt.ids
        sampler = Sampler(options, self.eos_ids, loaded.model.device)
        parts = Parts(tokenizer, prompt.text) if getattr(tokenizer, "response_template", None) else None
        seq = Sequence(
            prompt_ids, options, adapter, sampler, Detokenizer(tokenizer), started or time.monotonic(), parts
        )
        seq.constraint = self._constraint(options, parts)
        seq.usage.truncated_messages = prompt.left_out
        seq.usage.prompt_text, seq.usage.template_hash = prompt.text, self.template_hash
        if self.prefix_cache is not None:
            reused, layers = self.prefix_cache.lookup(seq.adapter, prompt_ids)
            if reused:
                seq.cache = DynamicCache(ddp_cache_data=layers)
                seq.fed = seq.usage.cached_prompt_tokens = reused
        return seq

    def _constraint(self, options, parts):
        """The grammar this reply must follow (decoding/grammar.py), or None. A model that thinks in
        `<think>` blocks may think first (or is inside one already, where its template opens it)."""
        template = str(self.loaded.tokenizer.chat_template or "")
        thinks = parts is not None and parts.can_reason and "<think>" in template and options.think is not False
        lark = grammar.lark_for(
            options,
            think="open" if thinks and parts.reasoning else thinks,
            think_tokens=options.max_new_tokens // 2,
            tokens=grammar.tag_tokens(self.loaded.tokenizer),
        )
        if lark is None:
            return None
        if grammar.CALL_OPEN in lark and grammar.CALL_OPEN not in template:
            raise InvalidOptions(
                "this model's chat template does not write tool calls as <tool_call> blocks: tool_choice "
                '"required" or a named function cannot be enforced for it (use "auto")'
            )
        if self._ll is None:  # once per loaded model: it reads the whole vocabulary
            self._ll = grammar.ll_tokenizer(self.loaded.tokenizer, self._vocab_size())
        return grammar.Constraint(self._ll, lark)

    def _vocab_size(self):
        """The width of the model's logits (its output embeddings: may exceed the tokenizer's vocabulary)."""
        return self.loaded.model.get_output_embeddings().weight.shape[0]

    def prefill(self, passes):
        """Run the scheduler's prefill passes (scheduler.py): [[(sequence, tokens)], ...].

        Several whole new prompts go through the model together; a single one is fed
        alone, `tokens` of it, in chunks of at most `prefill_chunk`. Once a prompt is all
        in, its first token is sampled and it joins the batch. A failure is recorded on
        its sequence (`error`); the others go on.
        """
        for group in passes:
            if len(group) > 1:
                self._prefill_together([seq for seq, _ in group])
            else:
                self._feed(*group[0])

    def _feed(self, seq, tokens):
        while tokens > 0 and seq.error is None and not seq.prefilled:
            tokens -= self._prefill_alone(seq, tokens)

    def _prefill_alone(self, seq, budget):
        """The next chunk of one prompt (at most `budget` tokens)."""
        chunk = seq.prompt_ids[seq.fed : seq.fed + min(self.prefill_chunk, budget)]
        device = self.loaded.model.device
        extra = {"adapter_names": [seq.adapter]} if self.loaded.is_peft else {}
        try:
            with torch.inference_mode():
                out = self.loaded.model(
                    input_ids=torch.tensor([chunk], device=device),
                    attention_mask=torch.ones(1, seq.fed + len(chunk), dtype=torch.long, device=device),
                    position_ids=torch.arange(seq.fed, seq.fed + len(chunk), device=device).unsqueeze(0),
                    past_key_values=seq.cache,
                    use_cache=True,
                    logits_to_keep=1,
                    **extra,
                )
        except Exception as exc:
            seq.error = self._failure(exc)
        if seq.error is not None:  # (out of the except block, so the failed pass's tensors are gone)
            seq.cache = None  # half-written: of no use to a later turn
            self._recover(seq.error)
            return len(chunk)
        seq.fed += len(chunk)
        if seq.prefilled:
            self._first_token(seq, out.logits[0, -1])
        return len(chunk)

    def _prefill_together(self, group):
        """Whole new prompts in one left-padded pass; each row's keys and values become its own cache.
        If the pass fails, each prompt is fed alone, so only a guilty one fails."""
        device = self.loaded.model.device
        width = max(len(seq.prompt_ids) for seq in group)
        pad = self.loaded.tokenizer.pad_token_id or 0
        padding = [width - len(seq.prompt_ids) for seq in group]
        ids = torch.tensor([[pad] * p + seq.prompt_ids for p, seq in zip(padding, group)], device=device)
        mask = torch.tensor([[0] * p + [1] * (width - p) for p in padding], device=device)
        cache = DynamicCache()
        extra = {"adapter_names": [seq.adapter for seq in group]} if self.loaded.is_peft else {}
        try:
            with torch.inference_mode():
                out = self.loaded.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                    **extra,
                )
        except Exception:
            out = cache = None
        if out is None:
            for seq in group:
                self._feed(seq, seq.to_feed)
            return
        for i, seq in enumerate(group):
            n = len(seq.prompt_ids)
            own = [
                (lay.keys[i : i + 1, :, -n:].contiguous(), lay.values[i : i + 1, :, -n:].contiguous())
                for lay in cache.layers
            ]
            seq.cache, seq.fed = DynamicCache(ddp_cache_data=own), n
            self._first_token(seq, out.logits[i, -1])

    def _first_token(self, seq, logits):
        """Sample the token after the prompt; the sequence then joins the batch (unless that ended it)."""
        try:
            with torch.inference_mode():
                self._accept(seq, logits, seq.prompt_ids)
            if not seq.finish_reason:
                self.batch.add(seq)
        except Exception as exc:
            seq.error = self._failure(exc)
        if seq.error is not None:
            self._recover(seq.error)

    def decode(self):
        """One step for every sequence in the batch; returns them, a failed one with its `error`.

        A failure in one row's sampling fails only that row. A failed forward pass fails
        every row: the batch is emptied (each row's keys and values may be half-written).
        """
        rows = list(self.batch.rows)
        constrained = [(i, seq.constraint) for i, seq in enumerate(rows) if seq.constraint is not None]
        # The grammar's masks are computed while the forward pass runs (they depend on the tokens so far only).
        masks = grammar.start_masks(constrained, self._vocab_size()) if constrained else None
        try:
            with torch.inference_mode():
                logits = self.batch.step(self.loaded.model, self.loaded.is_peft)
        except Exception as exc:
            error = self._failure(exc)
            if masks is not None:
                masks.exception()  # waits for it: a constraint is never used by two threads
        else:
            self._sample(rows, logits, constrained, masks)
            return rows
        self.batch.clear()  # out of the except block, so the failed pass's tensors are gone too
        for seq in rows:
            seq.error = error
        self._recover(error)
        return rows

    def _sample(self, rows, logits, constrained=(), masks=None):
        """Each row's next token, with its own settings; a failure fails only that row. `constrained` rows
        ([(index, Constraint)]) follow a grammar: `masks` (grammar.start_masks) says what each may write."""
        with torch.inference_mode():
            suppress = [i for i, seq in enumerate(rows) if seq.sampler.suppresses_eos(len(seq.tokens))]
            if suppress:  # `ignore_eos` rows, all at once
                rows_at, eos_at = (
                    torch.tensor(suppress, device=logits.device),
                    torch.tensor(self.eos_ids, device=logits.device),
                )
                logits[rows_at[:, None], eos_at] = float("-inf")
            if constrained:  # only these rows' logits are masked: the others sample as they would
                try:
                    grammar.apply_masks(logits, constrained, masks.result())
                except Exception as exc:  # the grammar failed: its rows fail, the others go on
                    for i, _ in constrained:
                        rows[i].error = exc  # (such a row samples nothing: the loop below skips it)
            greedy = logits.argmax(-1).tolist()
            kept = []  # rows that keep probabilities: (sequence, the scores its token came from, token)
            for i, seq in enumerate(rows):
                if seq.error is not None:
                    continue
                try:
                    if seq.sampler.greedy:
                        scores, token = logits[i : i + 1], greedy[i]
                    else:
                        scores = seq.sampler.scores(logits[i], seq.prompt_ids + seq.tokens, len(seq.tokens))
                        token = seq.sampler.choose(scores)
                    if seq.logprobs is None:
                        seq.accept(token)
                    else:
                        kept.append((seq, scores, token))
                except Exception as exc:
                    seq.error = exc
            if kept:
                self._accept_scored(kept)

    @staticmethod
    def _accept_scored(kept):
        """Score the rows that keep probabilities in one batched pass (logprobs.score), then accept their tokens."""
        k = max(seq.logprobs.k for seq, _, _ in kept)
        try:
            scored = score(torch.cat([scores for _, scores, _ in kept]), [token for _, _, token in kept], k)
        except Exception as exc:
            for seq, _, _ in kept:
                seq.error = exc
            return
        for (seq, _, token), scored_row in zip(kept, scored):
            try:
                seq.accept(token, scored_row)
            except Exception as exc:
                seq.error = exc

    @staticmethod
    def _accept(seq, logits, context_ids):
        """Sample one sequence's next token with its own settings (and score it, if it keeps probabilities)."""
        if seq.constraint is not None:
            grammar.mask_rows(logits[None], [(0, seq.constraint)])
        scores = seq.sampler.scores(logits, context_ids, len(seq.tokens))
        token = seq.sampler.choose(scores)
        seq.accept(token, score(scores, [token], seq.logprobs.k)[0] if seq.logprobs is not None else None)

    def _failure(self, exc):
        """The error a forward pass's rows end with: running out of memory is told as such."""
        if not isinstance(exc, torch.OutOfMemoryError):
            return exc
        log.error("out of memory in a forward pass on %s", self.loaded.device, exc_info=exc)
        return ModelhubError(
            f"The model ran out of memory ({self.loaded.device}) while writing this reply, so it was stopped. "
            "Memory was freed and the model goes on serving: try again, perhaps in a shorter conversation.",
            code="out_of_memory",
        )

    def _recover(self, error):
        """After running out of memory, free what can be: stored prefixes, the allocator's spare blocks."""
        if getattr(error, "code", None) != "out_of_memory":
            return
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        if str(self.loaded.device).startswith("cuda"):
            torch.cuda.empty_cache()

    def release(self, seq, keep=True):
        """Take the sequence out of the batch; keep its keys and values for a later turn (`keep`)."""
        keep = keep and self.prefix_cache is not None
        if seq in self.batch.rows:
            layers = self.batch.remove(seq, copy=keep)
        else:
            layers = [(lay.keys, lay.values) for lay in seq.cache.layers] if seq.cache is not None and seq.fed else None
            seq.cache = None  # its own tensors: nothing to copy
        if keep and layers:
            self.prefix_cache.store(seq.adapter, seq.cached_ids, layers)
