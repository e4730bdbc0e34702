"""Evaluate a base model and LoRA adapters of it on held-out rows: answers, perplexity, scores.

Read top to bottom: how a reference answer is cut into tokens after its prompt, how its
perplexity is measured (teacher forcing), how the candidates' answers are generated, and
`evaluate()`, which puts it together. Rows are plain `(prompt messages, reference answer)`
pairs: where they come from (a dataset snapshot) is the caller's business, so this can be
driven from a shell. The scoring itself is in text_scores.py.

Answers come through the normal serving path (`serving.start`, greedy: temperature 0, the
base's other defaults), a few rows at a time so the model's worker batches them with
whatever else it serves. Perplexity needs the weights themselves, and only the model's
worker thread may touch the served copy, so a separate copy is loaded here (`loading.load`,
exactly as it is served: dtype, device, quantization), adapters attached to it one after
another, and dropped at the end: budget memory for a second copy of the base. A model
with no local weights (remote, scripted) gets no perplexity.

torch is imported inside functions, so Django start-up never pays for it.
"""

import gc

from modelhub import serving
from modelhub.backends.loading import attach_adapter, load
from modelhub.prompts import encode, render_text
from modelhub.training.text_scores import compare

GREEDY = {"temperature": 0.0}


# --- perplexity ---------------------------------------------------------------


def answer_tokens(tokenizer, prompt, reference):
    """(prompt ids, answer ids): the prompt as served (the chat template with its generation prompt),
    then what the template writes for the reference answer after it (its end-of-turn marker too)."""
    prompt_text = render_text(tokenizer, prompt)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": reference}], tokenize=False)
    answer_text = full[len(prompt_text) :] if full.startswith(prompt_text) else reference + (tokenizer.eos_token or "")
    # Encoded apart, as the serving path encodes the prompt: the answer's first token never merges with it.
    return encode(tokenizer, prompt_text), encode(tokenizer, answer_text)


def reference_nll(loaded, rows):
    """Per row, (summed negative log-likelihood of the answer tokens, their count) under `loaded.model`.

    One plain forward pass per row (no padding to get wrong). A row longer than the context
    loses its prompt's oldest tokens first."""
    import torch

    results = []
    for prompt, reference in rows:
        prompt_ids, answer_ids = answer_tokens(loaded.tokenizer, prompt, reference)
        ids = (prompt_ids + answer_ids)[-loaded.context_length :]
        start = max(len(ids) - len(answer_ids), 1)  # the first token has nothing to be predicted from
        input_ids = torch.tensor([ids], device=loaded.device)
        with torch.no_grad():
            logits = loaded.model(input_ids=input_ids).logits[0].float()
        logprobs = torch.log_softmax(logits[start - 1 : -1], dim=-1)
        targets = input_ids[0, start:].unsqueeze(1)
        results.append((float(-logprobs.gather(1, targets).sum()), len(ids) - start))
    return results


def reference_nlls(settings, rows, adapters):
    """{None: the base's per-row NLLs, adapter name: its per-row NLLs} on one loaded copy of the base."""
    loaded = load(settings)
    try:
        found = {None: reference_nll(loaded, rows)}
        for name, folder in adapters.items():
            attach_adapter(loaded, name, folder)
            loaded.model.set_adapter(name)
            found[name] = reference_nll(loaded, rows)
        return found
    finally:
        device = loaded.device
        del loaded
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


# --- answers ------------------------------------------------------------------


def generate_answers(spec, prompts, adapter=None, overrides=None, batch=8):
    """Greedy answers to `prompts`, `batch` requests in flight at a time (the worker batches them)."""
    options = {**(overrides or {}), **GREEDY}
    answers = []
    for start in range(0, len(prompts), batch):
        requests = [serving.start(spec, prompt, options, adapter=adapter) for prompt in prompts[start : start + batch]]
        answers += ["".join(request) for request in requests]
    return answers


# --- the evaluation -------------------------------------------------------------


def candidate_name(spec, adapter):
    return f"{spec.name} + {adapter.name}" if adapter is not None else spec.name


def evaluate(spec, adapters, rows, overrides=None, resamples=1000, seed=0):
    """The base model and each adapter (Adapter rows of `spec`) on `rows`, side by side.

    Returns {"candidates": [names, the base first], "metrics", "differences" (text_scores.compare),
    "rows": [{"prompt", "reference", "answers": {name: text}, "nll": {name: [NLL, tokens]}}]}.
    Raises ModelhubError (a model that cannot load or answer) and ValueError (no rows)."""
    if not rows:
        raise ValueError("there are no rows to evaluate on")
    prompts, references = [prompt for prompt, _ in rows], [reference for _, reference in rows]
    candidates = [None, *adapters]
    answers = {candidate_name(spec, a): generate_answers(spec, prompts, a, overrides) for a in candidates}
    nlls = dict.fromkeys(answers)
    if spec.backend == spec.Backend.TRANSFORMERS:
        found = reference_nlls(spec.load_settings(), rows, {a.name: a.local_path for a in adapters})
        nlls = {candidate_name(spec, a): found[a.name if a else None] for a in candidates}
    compared = compare(
        {name: {"answers": answers[name], "nll": nlls[name]} for name in answers},
        references,
        resamples=resamples,
        seed=seed,
    )
    per_row = [
        {
            "prompt": prompt,
            "reference": reference,
            "answers": {name: answers[name][i] for name in answers},
            "nll": {name: list(nlls[name][i]) for name in answers if nlls[name]},
        }
        for i, (prompt, reference) in enumerate(rows)
    ]
    return {"candidates": list(answers), **compared, "rows": per_row}
