"""What structured output costs the batch: 8 replies at once on the in-process engine, 4 of them held to
a JSON schema by the grammar (modelhub/decoding/grammar.py: llguidance, a per-row token mask), against
the same 8 with none constrained.

One run, the built-in model, one engine (modelhub in this process). Each round submits a wave of 8
replies at once with no grammar and a wave whose first 4 must answer `{"text": "<a string>"}`, back to
back, in alternating order, so the machine's drift between rounds cancels out. Every row writes exactly
`--new-tokens` tokens: the free rows ignore the end of turn, and the schema's string is longer than the
reply can be (minLength), so the held rows end at the same length too. torch's and OpenMP's threads are
set (`--threads`): on a busy machine the default can slow a step many times.

Writes bench/results/structured.json and prints, last:
  unconstrained_rows_ratio=  the 4 free rows' tokens/s beside 4 held rows ÷ beside 4 free rows (≈ 1)
  structured_overhead_ratio= the batch's tokens/s with 4 held rows ÷ with none (issue 25's goal: >= 0.85)
each the median over rounds.

    .venv/bin/python bench/structured.py [--new-tokens 64] [--rounds 15] [--threads 2]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from stream import ROOT, setup_django

PROMPTS = [
    "hello there, how are you?",
    "what do you like to do on the weekend?",
    "tell me about your favourite book.",
    "where would you like to travel?",
    "what did you have for dinner?",
    "do you like music?",
    "what is your job like?",
    "how was your day?",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch's and OpenMP's threads")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "structured.json"))
    return parser.parse_args()


def schema_format(new_tokens):
    """A JSON answer whose one string cannot close before the reply reaches its token limit."""
    text = {"type": "string", "minLength": new_tokens * 8, "pattern": "^[a-z ,.]*$"}
    schema = {"type": "object", "properties": {"text": text}, "required": ["text"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def wave(spec, new_tokens, held):
    """Submit 8 replies at once (the first `held` under the schema); tokens and seconds of each row."""
    from modelhub import api

    free = {"temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True, "repetition_penalty": 1.0}
    bound = {**free, "ignore_eos": False, "response_format": schema_format(new_tokens)}
    started = time.perf_counter()
    requests = [
        api.start(spec, [{"role": "user", "content": prompt}], bound if i < held else free)
        for i, prompt in enumerate(PROMPTS)
    ]
    rows = []
    for request in requests:
        text = "".join(request)
        rows.append((request.usage.completion_tokens, time.perf_counter() - started, text))
    return rows


def main():
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MODELHUB_TORCH_THREADS"] = str(args.threads)
    setup_django(tempfile.mkdtemp(prefix="chatsite-bench-structured-"))
    import torch
    from django.core.management import call_command

    from modelhub import api

    torch.set_num_threads(args.threads)
    call_command("ensure_builtin_model", verbosity=0)
    spec = api.get_spec("chitchat")
    wave(spec, 8, 4)  # load the model and the grammar library's tokenizer before measuring
    batch, free_rows, rounds = [], [], []
    for index in range(args.rounds):
        figures = {}
        for held in (0, 4) if index % 2 == 0 else (4, 0):
            rows = wave(spec, args.new_tokens, held)
            wall = max(seconds for _, seconds, _ in rows)
            for tokens, _, text in rows[:held]:
                assert tokens == args.new_tokens and text.startswith('{"text":"'), (tokens, text[:40])
            figures[held] = {
                "batch_tokens_per_s": sum(tokens for tokens, _, _ in rows) / wall,
                "free_row_tokens_per_s": statistics.mean(tokens / seconds for tokens, seconds, _ in rows[4:]),
            }
        batch.append(figures[4]["batch_tokens_per_s"] / figures[0]["batch_tokens_per_s"])
        free_rows.append(figures[4]["free_row_tokens_per_s"] / figures[0]["free_row_tokens_per_s"])
        rounds.append(figures)
        print(f"round {index}: batch {batch[-1]:.3f}  free rows {free_rows[-1]:.3f}", flush=True)
    result = {
        "model": "chitchat (built-in)",
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "rounds": rounds,
        "structured_overhead_ratio": statistics.median(batch),
        "unconstrained_rows_ratio": statistics.median(free_rows),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"unconstrained_rows_ratio={result['unconstrained_rows_ratio']:.3f}")
    print(f"structured_overhead_ratio={result['structured_overhead_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
