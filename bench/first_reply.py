"""How long does a new user wait for the first token of the first reply after a server starts?

In one run, a freshly started daphne (`chatsite.asgi`, SQLite, the in-memory channel layer:
`make run`) on the built-in model (modelhub/builtin/chitchat), with MODELHUB_PRELOAD off and
on, alternating. Each round starts its server; a client then does what a page does: loads
the chat page, opens its socket (the page is ready), sends its first message and reads the
reply to the end. Measured: start -> listening, listening -> ready, ready -> the reply's first
token (`first_token_after_ready_s`), the model's load time, and the status frames the reply
sent while it waited. Two arrivals of the client, both in every run:

  person   `--arrive-after` seconds (default 5) after the server listens: a new user after
           `make run` opens the link, logs in and types (the key figure);
  at_once  as soon as it listens (a script; the worst case: with preload on, the reply
           waits for the rest of the load).

Servers run with OMP_NUM_THREADS=1 and MODELHUB_TORCH_THREADS=1. Writes
bench/results/first_reply.json and prints `first_token_after_ready_s=<person, preload on>`
last (goal <= 1 s). About 30 s a round.

    .venv/bin/python bench/first_reply.py [--rounds 1] [--arrive-after 5]
"""

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live import SHELL_PRELUDE, Server, Site, open_socket  # noqa: E402

SETUP = (
    SHELL_PRELUDE
    + """
import io
from django.core.management import call_command
from conversations.models import Conversation
call_command("ensure_builtin_model", stdout=io.StringIO())
user = User.objects.create_superuser("newcomer", password="live-pass-123")
conversations = [Conversation.objects.create(owner=user).pk for _ in range({rounds})]
print(json.dumps({{"cookie": session_for("newcomer"), "conversations": conversations}}))
"""
)
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MODELHUB_TORCH_THREADS": "1"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds of each arrival and setting (a fresh server each)"
    )
    parser.add_argument(
        "--arrive-after",
        type=float,
        default=5.0,
        help="seconds between the server listening and a person loading the chat page",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "first_reply.json"))
    return parser.parse_args()


def get(server, path, cookie):
    request = urllib.request.Request(server.url + path, headers={"Cookie": f"sessionid={cookie}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200, response.status
        return response.read().decode()


async def first_reply(server, cookie, conversation):
    """Open the page's socket, send the first message; the times of: socket open, first token, end."""
    ws = await open_socket(server, cookie, conversation)
    ready = time.perf_counter()
    await ws.send(json.dumps({"type": "send", "content": "Hello! How are you?", "options": {"max_new_tokens": 8}}))
    seen = {"ready": ready, "first_token": None, "statuses": []}
    reply = None
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
        kind = frame["type"]
        if kind == "message" and frame["status"] == "streaming":
            reply = frame["message_id"]
        elif kind == "status" and frame["message_id"] == reply:
            seen["statuses"].append(frame["text"])
        elif kind == "chunk" and frame["message_id"] == reply and seen["first_token"] is None:
            seen["first_token"] = time.perf_counter()
        elif kind == "error":
            raise SystemExit(f"the server refused or failed the reply: {frame}")
        elif kind == "done" and frame["message_id"] == reply:
            seen["status"] = frame["status"]
            await ws.close()
            return seen


def one_round(site, info, conversation, preload, arrival, arrive_after):
    server = Server(site, {**THREADS, "MODELHUB_PRELOAD": "1" if preload else "0"})
    started = time.perf_counter()
    server.start()  # returns once the port accepts connections
    listening = time.perf_counter()
    try:
        time.sleep(arrive_after)
        get(server, f"/c/{conversation}/", info["cookie"])  # the chat page, as a browser loads it
        seen = asyncio.run(first_reply(server, info["cookie"], conversation))
        runtime = re.search(
            r'class="field-runtime">([^<]*)<', get(server, "/admin/modelhub/modelspec/", info["cookie"])
        )[1]
    finally:
        server.stop()
    load = re.search(r"loaded in ([\d.]+)s", runtime)
    return {
        "arrival": arrival,
        "preload": preload,
        "listening_after_start_s": round(listening - started, 3),
        "ready_after_listening_s": round(seen["ready"] - listening, 3),
        "first_token_after_ready_s": round(seen["first_token"] - seen["ready"], 3),
        "model_load_s": float(load[1]) if load else None,
        "status_frames": len(seen["statuses"]),
        "status_texts": sorted({re.sub(r"\d+ s", "N s", text) for text in seen["statuses"]}),
        "reply_status": seen["status"],
    }


def environment():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = head.stdout.strip() or "unknown"
    if head.returncode == 0 and subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT).returncode:
        commit += " + uncommitted changes"
    return {
        "git_commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def main():
    args = parse_args()
    arrivals = {"person": args.arrive_after, "at_once": 0.0}
    plan = [(arrival, preload) for _ in range(args.rounds) for arrival in arrivals for preload in (False, True)]
    rounds = []
    with tempfile.TemporaryDirectory() as folder:
        site = Site(folder)
        try:
            info = site.setup(SETUP.format(rounds=len(plan)))
            for conversation, (arrival, preload) in zip(info["conversations"], plan):  # off, on, off, on...
                rounds.append(one_round(site, info, conversation, preload, arrival, arrivals[arrival]))
                print(json.dumps(rounds[-1]), flush=True)
        finally:
            site.close()

    def median(arrival, preload, key):
        values = [r[key] for r in rounds if (r["arrival"], r["preload"]) == (arrival, preload) and r[key] is not None]
        return round(statistics.median(values), 3) if values else None

    keys = ("listening_after_start_s", "ready_after_listening_s", "first_token_after_ready_s", "model_load_s")
    summary = {
        arrival: {
            setting: {key: median(arrival, preload, key) for key in keys}
            for setting, preload in (("preload_off", False), ("preload_on", True))
        }
        for arrival in arrivals
    }
    result = {
        **environment(),
        "what": "a fresh daphne on the built-in model: time from the chat page's socket opening to the first "
        "token of the first reply, MODELHUB_PRELOAD off vs on, rounds alternating (medians); the client "
        "arrives as a person would (arrive_after_s after the server listens) or at once",
        "server_env": {**THREADS, "database": "SQLite file", "channel_layer": "in-memory"},
        "arrive_after_s": arrivals,
        "rounds": rounds,
        "median": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {os.path.relpath(out, ROOT)}")
    for arrival, figures in summary.items():
        off, on = figures["preload_off"], figures["preload_on"]
        print(
            f"{arrival} ({arrivals[arrival]:g} s after listening): first token after ready "
            f"{off['first_token_after_ready_s']} s with preload off, {on['first_token_after_ready_s']} s on "
            f"(model load {on['model_load_s']} s)"
        )
    print(f"first_token_after_ready_s={summary['person']['preload_on']['first_token_after_ready_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
