"""The OpenAI-compatible API against the chat websocket: 8 clients at once, same prompts, same server.

    websocket  8 users, each with a socket on a new conversation, one turn each (bench/scale.py's wave)
    api        the same 8 users, each with its own API key (calls kept as conversations), 8 streamed
               `/v1/chat/completions` through the official openai AsyncOpenAI client

One daphne serves both (the built-in model in process, PostgreSQL, the in-memory channel layer), one
torch and OpenMP thread. Every reply is the built-in model's greedy answer of exactly --new-tokens
tokens. Rounds alternate websocket, api, each wave once the server is idle. Tokens/s: a wave's
completion tokens over the seconds from the sends to the last reply's end; TTFT: a send to its first
text. Medians over rounds; a ratio is the median of the per-round ones.

Goal (issue 14): api/websocket tokens/s >= 0.9 and TTFT p50 within 1.2x. Writes
bench/results/api.json and prints, last, `api_vs_websocket=`.

    .venv/bin/python bench/api.py [--rounds 5] [--new-tokens 128]
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MODELHUB_TORCH_THREADS": "1"}
os.environ.update(THREADS)

from live import environment  # noqa: E402
from scale import chat_wave, cpu_snapshot, fixed, quiet, ratio, summarize  # noqa: E402
from serve import PROMPTS  # noqa: E402
from stream import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.live import SHELL_PRELUDE, Site  # noqa: E402
from tests.postgres import PostgresDatabase  # noqa: E402

SETUP = """
import io
from django.core.management import call_command
from conversations.models import ApiKey, Conversation
from modelhub.models import ModelSpec
call_command("ensure_builtin_model", stdout=io.StringIO())
spec = ModelSpec.objects.get(name="chitchat")
users = [User.objects.create_user(f"api{i}", password="live-pass-123") for i in range(P["clients"])]
print(json.dumps({"cookies": [session_for(user.username) for user in users],
                  "keys": [ApiKey.objects.issue(user, "bench")[1] for user in users],
                  "conversations": [[Conversation.objects.create(owner=user, model=spec).pk for user in users]
                                    for _ in range(P["waves"])]}))
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "api.json"))
    return parser.parse_args()


async def api_wave(site, server, keys, n):
    """The same prompts through /v1/chat/completions, streamed, each client with its user's key."""
    from openai import AsyncOpenAI

    clients = [AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=300) for key in keys]
    sampling = fixed(n)
    extra = {"top_k": 0, "repetition_penalty": 1.0, "ignore_eos": True}

    async def one(client, prompt):
        sent, ttft, usage = time.perf_counter(), None, None
        stream = await client.chat.completions.create(
            model="chitchat",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
            temperature=0,
            top_p=1.0,
            max_tokens=sampling["max_new_tokens"],
            extra_body=extra,
        )
        async for chunk in stream:
            if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                ttft = time.perf_counter() - sent
            usage = chunk.usage or usage
        return ttft, time.perf_counter(), usage

    try:
        started = time.perf_counter()
        done = await asyncio.gather(*(one(client, prompt) for client, prompt in zip(clients, PROMPTS)))
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    assert all(usage.completion_tokens == n for _, _, usage in done), done
    return {
        "ttft": [ttft for ttft, _, _ in done],
        "e2e": [end - started for _, end, _ in done],
        "tokens": sum(usage.completion_tokens for _, _, usage in done),
        "prompt_tokens": sorted(usage.prompt_tokens for _, _, usage in done),
    }


async def run_rounds(args, site, server, info, roles):
    waves = {"websocket": [], "api": []}
    for index in range(args.rounds + 1):  # round 0 warms both paths up
        for setup in waves:
            await quiet(roles)
            if setup == "api":
                figures = await api_wave(site, server, info["keys"], args.new_tokens)
            else:
                figures = await chat_wave(
                    site, [server], info["cookies"], info["conversations"][index], args.new_tokens
                )
            figures["wall"] = max(figures["e2e"])
            figures["cpu_s"] = {}
            if index:
                waves[setup].append(figures)
        if index:
            print(
                f"round {index}: "
                + ", ".join(f"{s} {w[-1]['tokens'] / w[-1]['wall']:.0f} tok/s" for s, w in waves.items()),
                flush=True,
            )
    return waves


def main():
    args = parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        site = Site(folder, database=PostgresDatabase(), CHAT_MAX_REPLIES_PER_USER=16, **THREADS)
        try:
            params = {"clients": len(PROMPTS), "waves": args.rounds + 1}
            info = site.setup(SHELL_PRELUDE + f"P = json.loads({json.dumps(params)!r})\n" + SETUP)
            server = site.server()
            roles = {"daphne": [server.process.pid], "bench clients": [os.getpid()]}
            cpu_snapshot(roles)
            waves = asyncio.run(run_rounds(args, site, server, info, roles))
            tracebacks = server.log.count("Traceback")
            stored = site.rows("SELECT count(*) FROM conversations_conversation WHERE api_key_name = 'bench'")[0][0]
        finally:
            with open(os.devnull, "w") as devnull:
                sys.stdout, stdout = devnull, sys.stdout
                try:
                    site.close()
                finally:
                    sys.stdout = stdout
    setups = {setup: summarize(w, args.new_tokens) for setup, w in waves.items()}
    for figures in setups.values():
        figures.pop("cpu_s_median", None)
    throughput = ratio(waves, "api", "websocket")
    ttft = {setup: setups[setup]["ttft"]["p50_ms"] for setup in setups}
    result = {
        **environment(),
        "what": __doc__.split("\n\n")[0],
        "run_s": round(time.monotonic() - started),
        "threads": THREADS,
        "clients": len(PROMPTS),
        "rounds": args.rounds,
        "sampling": fixed(args.new_tokens),
        "server_tracebacks": tracebacks,
        "api_calls_kept_as_conversations": stored,
        "goals": {"api_vs_websocket": ">= 0.9", "ttft_p50_api_over_websocket": "<= 1.2"},
        "api_vs_websocket": throughput,
        "ttft_p50_api_over_websocket": round(ttft["api"] / ttft["websocket"], 3),
        "setups": setups,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {os.path.relpath(out, ROOT)} ({result['run_s']} s)")
    for setup, figures in setups.items():
        print(
            f"{setup}: {figures['tokens_per_s']} tok/s, TTFT p50 {figures['ttft']['p50_ms']} ms, "
            f"p99 {figures['ttft']['p99_ms']} ms, TPOT {figures['tpot_ms']} ms"
        )
    print(f"ttft_p50_api_over_websocket={result['ttft_p50_api_over_websocket']}")
    print(f"api_vs_websocket={throughput['median']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
