"""Where a reply looked: its attention weights, recomputed on demand in one forward pass.

Self-attention is how a causal LM reads its context: at every layer, each head of each
position weighs every position at or before it (a softmax row summing to 1) and mixes
their values. Generation runs on fast kernels (SDPA) that never form those weights, so for
a finished reply `compute` runs one forward pass over prompt + reply with eager attention
and `output_attentions`, and returns every layer's and head's [tokens × tokens] weights.

It runs as a Job in the model's worker thread (engine/worker.py), between two decode steps: the
switch to eager attention lasts for this pass only and no reply's step sees it. The cost
grows with the square of the length, so `size_problem` checks the limits
(MODELHUB_ATTENTION_MAX_TOKENS, MODELHUB_ATTENTION_MAX_MB) before any work. api.attention
queues the Job and keeps the last few results, since one page shows several views of a pass.
"""

from dataclasses import dataclass

import torch

from modelhub.decoding.logprobs import added_texts
from modelhub.engine.sequence import BASE
from modelhub.options import ModelhubError
from modelhub.prompts import encode, fit_prompt, render_text


@dataclass
class Attention:
    tokens: list  # each position's text, special tokens included
    prompt_tokens: int  # positions before the reply's first token
    weights: torch.Tensor  # [layers, heads, tokens, tokens] float32, on the CPU; row i: what position i attends to

    @property
    def layers(self):
        return self.weights.shape[0]

    @property
    def heads(self):
        return self.weights.shape[1]

    def as_message(self):
        """For the channel layer (a model worker answering a web process): the weights as float16 bytes,
        half the size, still far finer than a page shows."""
        return {
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "shape": list(self.weights.shape),
            "weights": self.weights.to(torch.float16).numpy().tobytes(),
        }

    @classmethod
    def from_message(cls, message):
        weights = torch.frombuffer(bytearray(message["weights"]), dtype=torch.float16)
        return cls(message["tokens"], message["prompt_tokens"], weights.reshape(message["shape"]).float())

    def row(self, position, layer=None, head=None):
        """What `position` attends to ([position + 1]): one layer's head, or the mean over heads and/or layers."""
        rows = self.weights[:, :, position, : position + 1]
        rows = rows[layer : layer + 1] if layer is not None else rows
        rows = rows[:, head : head + 1] if head is not None else rows
        return rows.mean(dim=(0, 1))


def size_problem(config, length, max_tokens, max_mb):
    """Why a pass over `length` tokens is refused under the limits (in words), or None."""
    layers = getattr(config, "num_hidden_layers", 0)
    heads = getattr(config, "num_attention_heads", 0)
    needed_mb = layers * heads * length * length * 4 / 2**20
    if length > max_tokens:
        return (
            f"This conversation is {length} tokens up to this reply; attention is shown for at most "
            f"{max_tokens} (MODELHUB_ATTENTION_MAX_TOKENS)."
        )
    if needed_mb > max_mb:
        return (
            f"Its attention weights ({layers} layers × {heads} heads × {length}² tokens) would take "
            f"{needed_mb:.0f} MiB; the limit is {max_mb:.0f} MiB (MODELHUB_ATTENTION_MAX_MB)."
        )
    return None


def compute(loaded, messages, reply, adapter=None, max_tokens=1024, max_mb=512.0, think=None, tools=None):
    """The Attention of one pass over `messages`' prompt and `reply`: token ids, text to encode, or an assistant
    turn ({"content", "reasoning_content"}) written as the chat template writes it, reasoning and all.

    Runs in the model's worker thread (a Job). `adapter` names a LoRA adapter attached to
    `loaded`; `think` and `tools` render the prompt as the reply got it. Raises ModelhubError when the
    limits refuse it."""
    tokenizer = loaded.tokenizer
    if isinstance(reply, dict):
        reply = written_turn(tokenizer, messages, reply, think, tools)
    reply_ids = list(reply) if not isinstance(reply, str) else encode(tokenizer, reply)
    prompt = fit_prompt(tokenizer, messages, loaded.context_length, max(len(reply_ids), 1), think, tools).ids
    ids = prompt + reply_ids
    problem = size_problem(loaded.model.config, len(ids), max_tokens, max_mb)
    if problem:
        raise ModelhubError(problem, code="attention_too_large")
    model = loaded.model
    base = model.get_base_model() if loaded.is_peft else model
    extra = {"adapter_names": [adapter or BASE]} if loaded.is_peft else {}
    kernel = base.config._attn_implementation
    base.set_attn_implementation("eager")  # the weights exist only in eager attention
    try:
        with torch.inference_mode():
            out = model(
                input_ids=torch.tensor([ids], device=model.device),
                output_attentions=True,
                use_cache=False,
                logits_to_keep=1,
                **extra,
            )
            weights = torch.stack([layer[0].float().cpu() for layer in out.attentions])
    finally:
        base.set_attn_implementation(kernel)
    before = [ids[max(n - 1, 0) : n] for n in range(len(ids))]
    texts = added_texts(tokenizer, [b + [token] for b, token in zip(before, ids)], before, skip_special_tokens=False)
    return Attention(texts, len(prompt), weights)


def written_turn(tokenizer, messages, turn, think=None, tools=None):
    """The text of an assistant turn after the prompt, as the chat template writes it (a model that thinks
    first: its reasoning in the template's tags, then the answer); its answer alone where the template
    writes the turn apart from the prompt it answered."""
    prompt = render_text(tokenizer, messages, think, tools)
    whole = render_text(tokenizer, [*messages, {"role": "assistant", **turn}], think, tools)
    return whole[len(prompt) :] if whole.startswith(prompt) else turn.get("content", "")
