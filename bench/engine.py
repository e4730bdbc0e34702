"""The embedded engine against `model.generate` on the same weights, for the built-in model and a 135M-shape one.

No server, no sockets: 8 replies asked at once of modelhub (`modelhub.api.start`, as the web process
and the API do), written by its worker thread in step-level batches, against the same 8 prompts as one
left-padded batch through transformers' `generate` (the limit for 8 at once: one forward pass a step,
nothing else), each measured back to back in every round, rounds alternated, so the machine's drift
cancels in the ratio. Greedy, fixed length (`ignore_eos`), float32, one torch and OpenMP thread.

Two prompt lengths: the chat prompts (~20 tokens), and the same prompts behind a ~400-token history,
where the keys and values a step reads and writes matter more (engine/batch.py keeps them in buffers
written in place; transformers' DynamicCache, which `generate` uses, grows them by concatenation).

Models (bench/models.py): `builtin` (6M parameters, 6 layers) and `smol135m` (random weights in
SmolLM2-135M's shape: 30 layers, hidden 576, GQA 9/3, vocabulary 49152).

Writes bench/results/engine.json and prints `engine_vs_padded_<model>_<prompt>=` (padded seconds over
the engine's: 1.0 is the limit's speed; goal >= 0.9), the machine's load before and after.

    .venv/bin/python bench/engine.py [--rounds 5] [--new-tokens 64] [--models builtin smol135m]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # before torch is imported

import models
from serve import PROMPTS, generate_padded
from stream import ROOT, setup_django

HISTORY = " ".join(["We talked about hiking, books, music and the weather, and then about food."] * 24)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["builtin", "smol135m"], choices=["builtin", "smol135m"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "engine.json"))
    return parser.parse_args()


def conversations(prompt_kind, wave):
    """The 8 conversations of one wave. Each opens with words of its own (the wave's number and its
    own), so no prompt shares more than the template's opening with another or with an earlier wave's:
    the engine's stored prefixes (engine/kv_reuse.py) have nothing to give, and both sides prefill
    every prompt whole."""
    if prompt_kind == "chat":
        return [[{"role": "user", "content": f"{wave} {i}. {p}"}] for i, p in enumerate(PROMPTS)]
    return [
        [
            {"role": "user", "content": f"{wave} {i}. {HISTORY}"},
            {"role": "assistant", "content": "Yes, we did."},
            {"role": "user", "content": p},
        ]
        for i, p in enumerate(PROMPTS)
    ]


def engine_wave(spec, messages, n):
    """Seconds for 8 replies asked at once of modelhub, each read to its end by a thread of its own."""
    from modelhub import api

    options = {"temperature": 0, "max_new_tokens": n, "ignore_eos": True, "repetition_penalty": 1.0}
    started = time.perf_counter()
    requests = [api.start(spec, m, options) for m in messages]
    threads = [threading.Thread(target=lambda r=r: "".join(r)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    assert all(r.usage.completion_tokens == n for r in requests), [r.usage.completion_tokens for r in requests]
    return seconds


def measure(name, folder, args):

    from modelhub.backends.loading import LoadSettings, load
    from modelhub.models import ModelSpec
    from modelhub.prompts import render_prompt

    spec = ModelSpec.objects.create(name=name, source=str(folder), dtype="float32", device="cpu")
    loaded = load(LoadSettings(str(folder), dtype="float32", device="cpu"))
    out = {}
    for kind in ("chat", "history"):
        warm = conversations(kind, "warm")
        engine_wave(spec, warm, 4)  # warm up (the first wave loads the model)
        generate_padded(loaded, [render_prompt(loaded.tokenizer, m) for m in warm], 4)
        engine, padded = [], []
        for index in range(args.rounds):
            messages = conversations(kind, index)
            prompts = [render_prompt(loaded.tokenizer, m) for m in messages]
            engine.append(engine_wave(spec, messages, args.new_tokens))
            padded.append(generate_padded(loaded, prompts, args.new_tokens))
            print(f"{name} {kind} round {index + 1}: engine {engine[-1]:.2f}s, padded generate {padded[-1]:.2f}s")
        ratios = [p / e for p, e in zip(padded, engine)]
        out[kind] = {
            "prompt_tokens_last_round": [len(p) for p in prompts],
            "engine_tokens_per_s": round(8 * args.new_tokens / statistics.median(engine), 1),
            "padded_generate_tokens_per_s": round(8 * args.new_tokens / statistics.median(padded), 1),
            "engine_vs_padded_by_round": [round(r, 3) for r in ratios],
            "engine_vs_padded": round(statistics.median(ratios), 3),
        }
    return out


def main():
    args = parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as var_dir:
        os.environ["MODELHUB_TORCH_THREADS"] = "1"
        setup_django(var_dir)
        import torch

        torch.set_num_threads(1)
        folders = {"builtin": models.builtin(), "smol135m": models.smol_shape()}
        results = {name: measure(name, folders[name], args) for name in args.models}
    out = {
        "models": results,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "machine": f"{os.cpu_count()} cores, torch threads 1",
        "load_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"load average before {out['load_before_after'][0]}, after {out['load_before_after'][1]}")
    for name, kinds in results.items():
        for kind, figures in kinds.items():
            print(f"engine_vs_padded_{name}_{kind}={figures['engine_vs_padded']}")


if __name__ == "__main__":
    sys.exit(main())
