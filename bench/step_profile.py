"""Where one decode step's time goes, in chatsite's model runner and in vLLM's engine (bench/scale.py's
`--profile-steps`): the same 8 prompts, the same steps of a reply, grouped into the same kinds of work.

chatsite's runner (`modelhub.engine.model_runner.Decoder.decode`) is timed in parts without a profiler, then run
under torch.profiler; vLLM's engine is run under its own torch profiler (`/start_profile`). Profiled
figures are for comparing kinds across the two engines; the timed parts are the measure of chatsite's.
"""

import asyncio
import json
import re
import time
import urllib.request
from pathlib import Path

from serve import PROMPTS
from stream import ROOT

BUILTIN = ROOT / "modelhub" / "builtin" / "chitchat"


# --- where a step's time goes --------------------------------------------------------

KINDS = [  # (kind, does an op of this name belong to it): the first match wins
    (
        "matmul",
        lambda n: "onednn_mm" in n or n in {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"},
    ),
    (
        "attention",
        lambda n: any(k in n for k in ("attention", "scaled_dot_product", "reshape_and_cache", "kv_cache_update")),
    ),
    ("cat (kv cache and mask growth, rope)", lambda n: n == "aten::cat"),
    (
        "elementwise, compiled (inductor's fused kernels)",
        lambda n: any(k in n for k in ("CompiledFxGraph", "Pregraph", "AOTDispatcher", "Torch-Compiled", "cpp_fused")),
    ),
    ("sampling", lambda n: any(k in n for k in ("argmax", "greedy", "sampl", "multinomial", "topk"))),
    ("python in the step (model runner, modules)", lambda n: n.startswith(("execute_context", "decode step"))),
    (
        "tensor copies, views, indexing",
        lambda n: (
            n.startswith("aten::")
            and any(
                k in n
                for k in (
                    "copy",
                    "view",
                    "slice",
                    "strided",
                    "reshape",
                    "narrow",
                    "split",
                    "chunk",
                    "index",
                    "empty",
                    "transpose",
                    "expand",
                    "squeeze",
                    "select",
                    "contiguous",
                    "clone",
                    "detach",
                    "alias",
                    "item",
                    "_local_scalar",
                    "new_",
                    "fill_",
                    "zero_",
                    "lift_fresh",
                    "resolve_",
                    "aten::to",
                    "aten::t",
                    "flatten",
                    "ones",
                    "zeros",
                    "full",
                )
            )
        ),
    ),
    ("elementwise, eager (norms, rope, activations)", lambda n: n.startswith("aten::")),
]


def by_kind(ops, steps):
    """{kind: self ms per step} and the top ops, from [(name, self ms, calls)] over `steps` steps."""
    kinds = {kind: 0.0 for kind, _ in KINDS} | {"other": 0.0}
    for name, self_ms, _ in ops:
        kinds[next((kind for kind, match in KINDS if match(name)), "other")] += self_ms / steps
    top = sorted(ops, key=lambda op: -op[1])[:10]
    return (
        {kind: round(v, 3) for kind, v in kinds.items()},
        [
            {"op": name, "self_ms_per_step": round(t / steps, 3), "calls_per_step": round(c / steps, 1)}
            for name, t, c in top
        ],
    )


def decoding(loaded, args):
    """modelhub's model runner, the 8 prompts prefilled together and decoded up to the first profiled step."""
    from modelhub.engine.model_runner import Decoder
    from modelhub.options import GenerationOptions

    decoder = Decoder(loaded)
    options = GenerationOptions(**args.sampling)
    rows = [decoder.open([{"role": "user", "content": prompt}], options) for prompt in PROMPTS]
    decoder.prefill([[(seq, seq.to_feed) for seq in rows]])
    for _ in range(args.profile_from):
        decoder.decode()
    return decoder, rows


def timed_parts(loaded, decoder, rows, steps):
    """Seconds of `steps` decode steps, whole and by part: wrappers time the runner's parts (instance
    attributes) and, inside the forward pass, the torch functions transformers calls (module attributes)."""
    import torch

    seconds = dict.fromkeys(("step", "forward", "sample", "detokenize", "linear", "attention", "cat"), 0.0)

    def wrap(name, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - started

        return timed

    functional, names = torch.nn.functional, ("linear", "scaled_dot_product_attention")
    originals = (torch.cat, *(getattr(functional, name) for name in names))
    decoder.batch.step, decoder._sample = wrap("step", decoder.batch.step), wrap("sample", decoder._sample)
    loaded.model.forward = wrap("forward", loaded.model.forward)
    for seq in rows:
        seq.detokenizer.add = wrap("detokenize", seq.detokenizer.add)
    torch.cat, functional.linear = wrap("cat", torch.cat), wrap("linear", functional.linear)
    functional.scaled_dot_product_attention = wrap("attention", functional.scaled_dot_product_attention)
    try:
        started = time.perf_counter()
        for _ in range(steps):
            decoder.decode()
        total = time.perf_counter() - started
    finally:
        torch.cat, functional.linear, functional.scaled_dot_product_attention = originals
        del loaded.model.forward  # the class's own again
    inner = {
        "matmul (linear)": seconds["linear"],
        "attention (sdpa)": seconds["attention"],
        "cat (kv cache and mask growth, rope)": seconds["cat"],
    }
    return {
        "whole step": total,
        "model forward": seconds["forward"],
        **inner,
        "rest of the forward (norms, rope, activations, module python)": seconds["forward"] - sum(inner.values()),
        "step inputs (ids, positions, mask)": seconds["step"] - seconds["forward"],
        "sampling (eos mask, argmax, accept)": seconds["sample"] - seconds["detokenize"],
        "detokenize": seconds["detokenize"],
        "decode bookkeeping": total - seconds["step"] - seconds["sample"],
    }


def profile_chatsite(args):
    """The same decode steps twice from the same state: timed in parts, then under torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from modelhub.backends.loading import LoadSettings, load

    torch.set_num_threads(1)
    loaded = load(LoadSettings(str(getattr(args, "model_dir", BUILTIN)), dtype="float32", device="cpu"))
    steps = args.profile_steps
    parts = timed_parts(loaded, *decoding(loaded, args), steps)
    decoder, rows = decoding(loaded, args)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("decode step"):
                decoder.decode()
    averages = prof.key_averages()
    kinds, top = by_kind([(e.key, e.self_cpu_time_total / 1000, e.count) for e in averages], steps)
    whole = next(e.cpu_time_total for e in averages if e.key == "decode step") / 1000
    return {
        "rows": len(rows),
        "steps": f"{args.profile_from}..{args.profile_from + steps - 1}",
        "step_ms": {part: round(1000 * v / steps, 3) for part, v in parts.items()},
        "profiled_step_ms": round(whole / steps, 3),
        "self_ms_per_step_by_kind": kinds,
        "top_ops": top,
        "note": "step_ms is timed without the profiler; under it every op costs more (cat, with its fresh "
        "buffers, several times more): its kinds are for comparing with vLLM's, also profiled",
    }


def profile_vllm(args, vllm, folder, vllm_wave):
    """vLLM's engine under its torch profiler for the same steps of one 8-request wave (`vllm_wave(client, n)`)."""
    from openai import AsyncOpenAI

    def post(path, body):
        request = urllib.request.Request(
            vllm.base_url.removesuffix("/v1") + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=300).read()

    async def wave():
        async with AsyncOpenAI(base_url=vllm.base_url, api_key="none", max_retries=0, timeout=300) as client:
            await vllm_wave(client, args.new_tokens)

    post("/start_profile", {"delay_iterations": args.profile_from + 1, "max_iterations": args.profile_steps})
    asyncio.run(wave())
    post("/stop_profile", {})  # it stopped after max_iterations already: this does nothing then
    deadline = time.monotonic() + 60
    while not (tables := sorted(Path(folder).glob("*.profiler_out.txt"))) and time.monotonic() < deadline:
        time.sleep(0.5)
    ops = parse_table(tables[-1].read_text())
    steps = [(name, calls, total) for name, _, calls, total in ops if name.startswith("execute_context")]
    count = sum(calls for _, calls, _ in steps)
    kinds, top = by_kind([(name, self_ms, calls) for name, self_ms, calls, _ in ops], count)
    return {
        "steps": {name: calls for name, calls, _ in steps},
        "profiled_step_ms": round(sum(total for _, _, total in steps) / count, 3),
        "self_ms_per_step_by_kind": kinds,
        "top_ops": top,
        "note": "the engine core process only: its scheduler and the API server (HTTP, detokenizing) are not here",
    }


def parse_table(text):
    """[(name, self ms, calls, total ms)] from a torch profiler table (vLLM's *.profiler_out.txt)."""

    def to_ms(value):
        number, unit = re.fullmatch(r"([\d.]+)(ns|us|ms|s)", value).groups()
        return float(number) * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    cells = [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]
    return [(c[0], to_ms(c[2]), int(c[6]), to_ms(c[4])) for c in cells if len(c) == 7 and c[6].isdigit()]
