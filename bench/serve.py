"""Serving speed as websocket clients see it: step-level batching against peers and the limit.

One run, one real daphne server (`chatsite.asgi`) with the built-in model, clients
that send frames and time every chunk (vLLM's metrics: time to first token, time
per output token, inter-token latency p50/p99, output tokens/s, requests/s) at fixed
concurrency 1, 2, 4, 8 and under Poisson arrivals. In the same run, for the same
prompts and fixed lengths (greedy, end-of-turn ignored), in this process:
  serial:  one request after another with plain `model.generate` (what in-process peers do),
  padded:  one left-padded batch through `model.generate` (the limit for 8 at once),
  cb:      transformers' own continuous batching (`generate_batch`).
Also: a batch of 8 requests on two adapters against 8 on one adapter; time to first
token at turn 20 of a conversation against turn 1 (KV reuse); a short request's
time to first token behind 7 long ones against alone.

Writes bench/results/serve[-<device>].json and docs/benchmarks/serve[-<device>].png, and prints
`batch8_vs_limit=<ours/padded-batch>` last: the median over rounds of the padded
batch's seconds over ours, the two measured back to back in each round, so the
machine's drift between rounds cancels out (targets in issue 6: >= 0.8; mixed
adapters <= 1.5x single; turn 20 <= 1.5x turn 1; short behind long <= 2x alone).
The server runs with its default settings, so a reply's tokens reach the client in
frames of at most 20 per second (CHAT_STREAM_INTERVAL_SECONDS): inter-token latency
here is the gap between frames, and time per output token is (end - first) / (n - 1).

    .venv/bin/python bench/serve.py [--new-tokens 128] [--rounds 7] [--model-dir PATH]
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from stream import ROOT, free_port, setup_django, start_server

PROMPTS = [
    "Hello! What did you do this weekend?",
    "Do you have any pets?",
    "What kind of music do you like to listen to when you are working?",
    "I just got back from a trip to the mountains.",
    "What's your favourite food?",
    "Have you seen any good movies lately? I am looking for something to watch tonight.",
    "How was your day?",
    "I'm thinking about learning to play the guitar. Any advice?",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--model-dir", default=str(ROOT / "modelhub" / "builtin" / "chitchat"))
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--plot-dir", default=str(ROOT / "docs" / "benchmarks"), help="where the plot goes (the docs show it)"
    )
    return parser.parse_args()


def fixed(n):
    return {"temperature": 0, "max_new_tokens": n, "ignore_eos": True, "repetition_penalty": 1.0}


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


# --- in-process references ----------------------------------------------------


def generate_serial(loaded, prompts, n):
    """Seconds for the prompts one after another, each alone through `generate`."""
    import torch

    started = time.perf_counter()
    for ids in prompts:
        ids = torch.tensor([ids], device=loaded.device)
        with torch.inference_mode():
            loaded.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=loaded.tokenizer.pad_token_id,
            )
    return time.perf_counter() - started


def generate_padded(loaded, prompts, n):
    """Seconds for all prompts as one left-padded batch through `generate`."""
    import torch

    width = max(len(p) for p in prompts)
    pad = loaded.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=loaded.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=loaded.device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad
        )
    assert out.shape[1] - width == n
    return time.perf_counter() - started


def generate_cb(loaded, prompts, n):
    """Seconds for the prompts through transformers' continuous batching, or the error it raised."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id
    )
    started = time.perf_counter()
    try:
        outputs = loaded.model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    assert len(outputs) == len(prompts)
    return time.perf_counter() - started


# --- websocket clients ----------------------------------------------------------


class Client:
    def __init__(self, port, cookie):
        self.url = f"ws://127.0.0.1:{port}/ws/conversations/%d/"
        self.headers = {"Cookie": f"sessionid={cookie}", "Origin": f"http://127.0.0.1:{port}"}

    async def ask(self, conversation_id, content, options, first_chunk=None, connected=None, go=None):
        """Send one message and time the reply's chunks: {ttft, e2e, saved, gaps, tokens, message_id}.

        Times count from the send frame: the socket is open before (a chat page opens it on
        load). `e2e` is when the last token arrived, `saved` when the final `done` frame did
        (the reply is stored by then). With `go`, the message is sent once the test sets it
        (after `connected`).
        """
        import websockets

        async with websockets.connect(self.url % conversation_id, additional_headers=self.headers) as ws:
            if go is not None:
                connected.release()
                await go.wait()
            started = time.perf_counter()
            await ws.send(json.dumps({"type": "send", "content": content, "options": options}))
            arrivals = []
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "error":
                    raise SystemExit(f"server error: {frame}")
                if frame["type"] == "chunk":
                    arrivals.append(time.perf_counter() - started)
                    if first_chunk is not None and len(arrivals) == 1:
                        first_chunk.set()
                if frame["type"] == "done":
                    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
                    return {
                        "ttft": arrivals[0],
                        "e2e": arrivals[-1],
                        "saved": time.perf_counter() - started,
                        "gaps": gaps,
                        "tokens": options["max_new_tokens"],
                        "message_id": frame["message_id"],
                    }


def summarize(results, wall):
    """vLLM-style figures for a set of finished requests that took `wall` seconds together."""
    tokens = sum(r["tokens"] for r in results)
    gaps = [g for r in results for g in r["gaps"]]
    tpot = [(r["e2e"] - r["ttft"]) / (r["tokens"] - 1) for r in results if r["tokens"] > 1]
    ms = lambda x: None if x is None else round(1000 * x, 2)  # noqa: E731
    return {
        "requests": len(results),
        "ttft_ms_p50": ms(percentile([r["ttft"] for r in results], 50)),
        "ttft_ms_p99": ms(percentile([r["ttft"] for r in results], 99)),
        "tpot_ms_mean": ms(statistics.mean(tpot)),
        "itl_ms_p50": ms(percentile(gaps, 50)),
        "itl_ms_p99": ms(percentile(gaps, 99)),
        "output_tokens_per_s": round(tokens / wall, 2),
        "requests_per_s": round(len(results) / wall, 3),
        "wall_s": round(wall, 3),
    }


class Bench:
    """The server, its user and the helpers that run waves of requests against it."""

    def __init__(self, args, client, user, spec):
        self.args, self.client, self.user, self.spec = args, client, user, spec

    def conversation(self, adapter=None):
        from conversations.models import Conversation

        return Conversation.objects.create(owner=self.user, model=self.spec, adapter=adapter).pk

    def conversations(self, count):
        """New conversations made before a timed run: the bench never writes to the database
        while the server is being timed (SQLite has one writer at a time)."""
        return [self.conversation() for _ in range(count)]

    async def wave(self, prompts, n, adapters=None, options=None):
        """All prompts sent at once (sockets already open), each in a new conversation, greedy and `n` tokens
        long unless `options` says otherwise.

        Returns the results and the seconds from the sends to the last token received.
        """
        adapters = adapters or [None] * len(prompts)
        ids = [self.conversation(a) for a in adapters]
        connected, go = asyncio.Semaphore(0), asyncio.Event()
        options = options or fixed(n)
        asks = [
            asyncio.ensure_future(self.client.ask(c, p, options, connected=connected, go=go))
            for c, p in zip(ids, prompts)
        ]
        for _ in asks:
            await connected.acquire()
        go.set()
        results = await asyncio.gather(*asks)
        return results, max(r["e2e"] for r in results)

    async def concurrency(self, level, total, n):
        """`level` clients, each sending its next request as soon as its last one is done."""
        queue = list(enumerate(self.conversations(total)))
        results = []

        async def user():
            while queue:
                index, conversation = queue.pop()
                results.append(await self.client.ask(conversation, PROMPTS[index % len(PROMPTS)], fixed(n)))

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(level)))
        return summarize(results, time.perf_counter() - started)

    async def poisson(self, rate, total, n, seed=0):
        """Requests arriving at random (exponential gaps, mean 1/rate seconds)."""
        rng = random.Random(seed)
        tasks = []
        conversations = self.conversations(total)
        started = time.perf_counter()
        for index, conversation in enumerate(conversations):
            tasks.append(asyncio.ensure_future(self.client.ask(conversation, PROMPTS[index % len(PROMPTS)], fixed(n))))
            await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        return summarize(results, time.perf_counter() - started)

    async def turns(self, count, n):
        """Time to first token at each turn of one conversation."""
        conversation = self.conversation()
        return [
            (await self.client.ask(conversation, f"tell me more, part {turn}", fixed(n)))["ttft"]
            for turn in range(count)
        ]

    async def short_behind_long(self, long_tokens, short_tokens):
        """A short request's time to first token while 7 long replies are streaming."""
        streaming = [asyncio.Event() for _ in range(7)]
        *others, mine = self.conversations(8)
        long = [
            asyncio.ensure_future(self.client.ask(c, p, fixed(long_tokens), first_chunk=e))
            for c, p, e in zip(others, PROMPTS[1:], streaming)
        ]
        await asyncio.gather(*(e.wait() for e in streaming))
        short = await self.client.ask(mine, PROMPTS[0], fixed(short_tokens))
        await asyncio.gather(*long)
        return short["ttft"]

    async def short_alone(self, short_tokens):
        return (await self.client.ask(self.conversation(), PROMPTS[0], fixed(short_tokens)))["ttft"]


def make_adapters(model_dir, folder, device):
    """Two LoRA adapters (random weights: only speed matters here) on the attention and MLP projections."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            init_lora_weights=False,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
        path = Path(folder) / f"lora{seed}"
        get_peft_model(base, config).save_pretrained(path)
        paths.append(path)
    return paths


def run(args, bench, loaded, adapters):
    """Every measurement; returns the results dict (without machine details)."""
    from modelhub.prompts import render_prompt

    n, rounds = args.new_tokens, args.rounds
    prompts = [render_prompt(loaded.tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]
    asyncio.run(bench.wave(PROMPTS, n))  # warm up: the server loads the model on first use
    serial, padded, ours = [], [], []
    for index in range(rounds):  # alternate, so the machine's drift hits all three alike
        padded.append(generate_padded(loaded, prompts, n))
        serial.append(generate_serial(loaded, prompts, n))
        results, wall = asyncio.run(bench.wave(PROMPTS, n))
        ours.append(wall)
        print(
            f"round {index + 1}: serial {serial[-1]:.2f}s, padded batch {padded[-1]:.2f}s, "
            f"websocket batch of 8 {wall:.2f}s"
        )
    tok = lambda seconds: round(len(PROMPTS) * n / statistics.median(seconds), 2)  # noqa: E731
    cb = generate_cb(loaded, prompts, n)
    out = {
        "batch8": {
            "serial_generate_tokens_per_s": tok(serial),
            "padded_generate_tokens_per_s": tok(padded),
            "ours_websocket_tokens_per_s": tok(ours),
            "transformers_continuous_batching_tokens_per_s": tok([cb]) if isinstance(cb, float) else cb,
            "seconds": {"serial": serial, "padded": padded, "ours": ours},
        }
    }
    out["concurrency"] = {str(c): asyncio.run(bench.concurrency(c, max(4, 2 * c), n)) for c in (1, 2, 4, 8)}
    out["poisson"] = {"rate_per_s": 4.0, **asyncio.run(bench.poisson(4.0, 16, n))}
    print("concurrency:", json.dumps(out["concurrency"]))
    single, mixed = [], []
    asyncio.run(bench.wave(PROMPTS, 8, adapters * 4))  # warm up: each adapter loads on first use
    for _ in range(rounds):
        single.append(asyncio.run(bench.wave(PROMPTS, n, [adapters[0]] * 8))[1])
        mixed.append(asyncio.run(bench.wave(PROMPTS, n, adapters * 4))[1])
    print("poisson:", json.dumps(out["poisson"]))
    out["adapters"] = {
        "single_adapter_batch8_s": statistics.median(single),
        "mixed_two_adapters_batch8_s": statistics.median(mixed),
        "mixed_vs_single": round(statistics.median(mixed) / statistics.median(single), 4),
    }
    print("adapters:", json.dumps(out["adapters"]))
    ttfts = [asyncio.run(bench.turns(20, 8)) for _ in range(rounds)]
    first, last = statistics.median(t[0] for t in ttfts), statistics.median(t[-1] for t in ttfts)
    out["turns"] = {
        "ttft_turn1_ms": round(1000 * first, 2),
        "ttft_turn20_ms": round(1000 * last, 2),
        "turn20_vs_turn1": round(last / first, 4),
        "ttft_ms_by_turn": [round(1000 * x, 2) for x in ttfts[-1]],
    }
    print("turns:", json.dumps(out["turns"]))
    alone = statistics.median(asyncio.run(bench.short_alone(8)) for _ in range(rounds))
    behind = statistics.median(asyncio.run(bench.short_behind_long(3 * n, 8)) for _ in range(rounds))
    out["fairness"] = {
        "short_ttft_alone_ms": round(1000 * alone, 2),
        "short_ttft_behind_7_long_ms": round(1000 * behind, 2),
        "behind_vs_alone": round(behind / alone, 4),
    }
    out["batch8"]["ours_vs_padded_by_round"] = [round(p / o, 4) for p, o in zip(padded, ours)]
    out["batch8_vs_limit"] = round(statistics.median(p / o for p, o in zip(padded, ours)), 4)
    return out


def plot(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(out["concurrency"])
    xs = [int(c) for c in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(
        xs, [out["concurrency"][c]["output_tokens_per_s"] for c in levels], marker="o", label="chatsite (websocket)"
    )
    batch = out["batch8"]
    left.axhline(batch["serial_generate_tokens_per_s"], color="grey", linestyle="--", label="serial generate (peers)")
    left.axhline(batch["padded_generate_tokens_per_s"], color="black", linestyle=":", label="padded batch of 8 (limit)")
    left.set(xlabel="concurrent clients", ylabel="output tokens/s", title="Throughput")
    left.legend(fontsize=8)
    right.plot(xs, [out["concurrency"][c]["ttft_ms_p50"] for c in levels], marker="o", label="TTFT p50")
    right.plot(xs, [out["concurrency"][c]["itl_ms_p50"] for c in levels], marker="s", label="ITL p50")
    right.plot(xs, [out["concurrency"][c]["itl_ms_p99"] for c in levels], marker="^", label="ITL p99")
    right.set(xlabel="concurrent clients", ylabel="ms", title="Latency at the client")
    right.legend(fontsize=8)
    fig.suptitle(f"{out['model']} on {out['device']}: batch8_vs_limit={out['batch8_vs_limit']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as var_dir:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # the clients create their conversations in passing
        os.environ["CHAT_MAX_REPLIES_PER_USER"] = "100"  # one bench user plays every client,
        os.environ["CHAT_USER_FRAMES_PER_SECOND"] = "1000"  # at more frames a second than one person sends
        os.environ["CHAT_USER_FRAMES_BURST"] = "1000"
        setup_django(var_dir)
        import torch
        from django.contrib.auth import get_user_model
        from django.test import Client as DjangoClient

        from modelhub.backends.loading import LoadSettings, load
        from modelhub.models import Adapter, ModelSpec

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "bfloat16" if device == "cuda" else "float32"
        spec = ModelSpec.objects.create(name="bench", source=args.model_dir, dtype=dtype, device=device)
        adapters = [
            Adapter.objects.create(name=p.name, base=spec, path=str(p))
            for p in make_adapters(args.model_dir, var_dir, device)
        ]
        user = get_user_model().objects.create_user("bench", password="bench-pass-123")
        django_client = DjangoClient()
        django_client.force_login(user)
        loaded = load(LoadSettings(args.model_dir, dtype=dtype, device=device))
        port = free_port()
        server = start_server(port)
        try:
            bench = Bench(args, Client(port, django_client.cookies["sessionid"].value), user, spec)
            out = run(args, bench, loaded, adapters)
        except BaseException:
            print((Path(var_dir) / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            server.terminate()
            server.wait(10)
    out.update(
        model=os.path.relpath(args.model_dir, ROOT),
        device=device,
        dtype=dtype,
        new_tokens=args.new_tokens,
        rounds=args.rounds,
        machine=f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        date=time.strftime("%Y-%m-%d"),
    )
    stem = Path(args.out_dir) / ("serve" if device == "cpu" else f"serve-{device}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    plot(out, (Path(args.plot_dir) / stem.name).with_suffix(".png"))
    print("fairness:", json.dumps(out["fairness"]))
    print(f"batch8_vs_limit={out['batch8_vs_limit']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
