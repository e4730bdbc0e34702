"""What torch.compile does for a decode step on CPU: 8 rows, 48 greedy steps after a 32-token prompt,
transformers' own forward with its DynamicCache, eager against `torch.compile(model.forward, dynamic=True)`,
one torch thread, 5 alternating rounds after one compiling run. Writes bench/results/compile-<model>.json
and prints `compile_speedup=` (eager ms a step over compiled) and the seconds the compile took.

    .venv/bin/python bench/compile.py [--model builtin|smol135m]
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from models import builtin, smol_shape
from stream import ROOT

ROWS, PROMPT, STEPS = 8, 32, 48


def ms_per_step(forward, vocab):
    import torch
    from transformers import DynamicCache

    ids = torch.randint(10, vocab - 1, (ROWS, PROMPT), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache()
    with torch.inference_mode():
        token = forward(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        started = time.perf_counter()
        for _ in range(STEPS):
            out = forward(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
    return (time.perf_counter() - started) / STEPS * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["builtin", "smol135m"], default="builtin")
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    folder = builtin() if args.model == "builtin" else smol_shape("float32")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    compiled = torch.compile(model.forward, dynamic=True)
    started = time.perf_counter()
    ms_per_step(compiled, vocab)
    compile_s = time.perf_counter() - started
    eager, fast = [], []
    for _ in range(5):
        eager.append(ms_per_step(model.forward, vocab))
        fast.append(ms_per_step(compiled, vocab))
    result = {
        "model": args.model,
        "torch": torch.__version__,
        "compile_and_first_run_s": round(compile_s, 1),
        "eager_ms_per_step": [round(x, 2) for x in eager],
        "compiled_ms_per_step": [round(x, 2) for x in fast],
        "compile_speedup": round(statistics.median(eager) / statistics.median(fast), 3),
        "load_average": os.getloadavg(),
    }
    out = ROOT / "bench" / "results" / f"compile-{args.model}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"compile_and_first_run_s={result['compile_and_first_run_s']}")
    print(f"compile_speedup={result['compile_speedup']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
