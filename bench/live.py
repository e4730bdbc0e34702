"""Live chatsite servers for the load, storm and fuzz benches, on either backend.

    sqlite    the embedded default (`make run`): one daphne, a SQLite file, the in-memory
              channel layer
    postgres  the deployed setup: two daphnes on two ports sharing PostgreSQL (a database
              made for the run, dropped after) and Redis (a db number of the script's own,
              flushed before and after); clients are split across the two ports

Django is set up once per process, for one database, so a script's `main` hands its
measurement to `run_backends`: each backend runs in a child process of the script,
which writes its figures to a file; the parent merges them into
bench/results/<name>.json with the environment, and prints each backend's key lines last.
Servers run with OMP_NUM_THREADS and MODELHUB_TORCH_THREADS set (`--threads`), and talk
only to 127.0.0.1.
"""

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from serve import percentile
from stream import ROOT, free_port, setup_django, start_server

POSTGRES = "postgres://postgres@127.0.0.1:5432/"
REDIS = "redis://127.0.0.1:6379/"
PROCESSES = {"sqlite": 1, "postgres": 2}
MODELS = {  # what each --model choice registers (the scripted one echoes the user's words, one per step)
    "builtin": "modelhub/builtin/chitchat (manage.py ensure_builtin_model)",
    "scripted": "scripted echo, delay=0.02 s per decode step",
}


def add_arguments(parser, model):
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--model", choices=sorted(MODELS), default=model)
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of each server process")
    parser.add_argument("--out", default=None, help="results file (default bench/results/<name>.json)")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # set by the parent: this child's figures go there


def ms(seconds):
    return None if seconds is None else round(1000 * seconds, 1)


def latency(values):
    """p50/p95 in milliseconds of a list of seconds."""
    return {"n": len(values), "p50_ms": ms(percentile(values, 50)), "p95_ms": ms(percentile(values, 95))}


def run_backends(args, name, measure, key_lines):
    """Run `measure(args)` on each backend asked for; write the results and print `key_lines(figures)` last.

    In a child (`--part`), measure one backend and write its figures to the part file.
    """
    if args.part:
        Path(args.part).write_text(json.dumps(measure(args), indent=2))
        return 0
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for backend in backends:
            part = Path(folder) / f"{backend}.json"
            print(f"=== {name} on {backend} ===", flush=True)
            child = subprocess.run(
                [sys.executable, sys.argv[0], *sys.argv[1:], "--backend", backend, "--part", str(part)]
            )
            failed = {"failed": f"exit status {child.returncode}"}
            results[backend] = json.loads(part.read_text()) if part.exists() else failed
    out = Path(args.out or ROOT / "bench" / "results" / f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**environment(), "backends": results}, indent=2) + "\n")
    print(f"wrote {os.path.relpath(out, ROOT)}")
    for backend, figures in results.items():
        lines = [f"{backend}: failed ({figures['failed']})"] if "failed" in figures else key_lines(figures)
        for line in lines:
            print(f"{line} ({backend})")
    return 0 if all("failed" not in f for f in results.values()) else 1


def environment():
    """When and where: the checkout's commit (marked when the working tree differs from it), the machine."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = head.stdout.strip() or f"unknown ({ROOT} is not a git checkout)"
    if head.returncode == 0 and subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT).returncode:
        commit += " + uncommitted changes"
    return {
        "git_commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def utf16_length(text):
    return len(text.encode("utf-16-le")) // 2


async def turn(ws, content, options, timeout):
    """A normal chat turn: send one message and follow its reply to `done`.

    Returns what the client saw: outcome (complete, status:<s>, refused:<code>), time to
    first chunk, the reply's id, its text assembled from the chunks, chunk offsets that
    did not follow on. Raises TimeoutError after `timeout` seconds.
    """
    seen = {"outcome": None, "ttft": None, "reply_id": None, "text": "", "offset_gaps": 0}
    started = time.perf_counter()
    await ws.send(json.dumps({"type": "send", "content": content, "options": options}))
    while True:
        left = timeout - (time.perf_counter() - started)
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(left, 0.001)))
        kind = frame.get("type")
        if kind == "error" and seen["reply_id"] is None:
            seen["outcome"] = f"refused:{frame['code']}"
            return seen
        if kind == "error":  # the reply failed: its `done` frame follows
            seen["failure"] = frame["code"]
        elif kind == "message" and frame["status"] == "streaming":
            seen["reply_id"] = frame["message_id"]
        elif kind == "message" and frame["status"] == "error":  # no usable model: no task, no `done`
            seen.update(reply_id=frame["message_id"], outcome="status:error")
            return seen
        elif kind == "chunk" and frame["message_id"] == seen["reply_id"]:
            if seen["ttft"] is None:
                seen["ttft"] = time.perf_counter() - started
            seen["offset_gaps"] += frame["offset"] != utf16_length(seen["text"])
            seen["text"] += frame["text"]
        elif kind == "done" and frame["message_id"] == seen["reply_id"]:
            seen["outcome"] = "complete" if frame["status"] == "complete" else f"status:{frame['status']}"
            return seen


class Live:
    """One backend's database, channel layer and daphne process(es), for `with`.

    Inside the block Django is set up on the run's database (migrated), so the script
    creates users, models and conversations with the ORM, then calls `serve()`.
    """

    def __init__(self, args, name, redis_db, env=None):
        self.args, self.backend, self.name, self.redis_db = args, args.backend, name, redis_db
        self.env = {
            "OMP_NUM_THREADS": str(args.threads),
            "MKL_NUM_THREADS": str(args.threads),
            "MODELHUB_TORCH_THREADS": str(args.threads),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.ports, self.processes, self.logs = [], [], []

    def __enter__(self):
        self.folder = tempfile.TemporaryDirectory()
        var = Path(self.folder.name)
        os.environ.update(self.env)
        if self.backend == "postgres":
            self._postgres(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)", f"CREATE DATABASE {self.database}")
            os.environ.update(DATABASE_URL=POSTGRES + self.database, REDIS_URL=f"{REDIS}{self.redis_db}")
            self._redis().flushdb()
        else:  # every server has its own var dir (for its log), so the database is named outright
            os.environ["DATABASE_URL"] = f"sqlite:///{var / 'db.sqlite3'}"
            os.environ.pop("REDIS_URL", None)
        setup_django(str(var))
        return self

    def __exit__(self, kind, value, traceback):
        if kind is not None:  # show why: the end of each server's log
            for log in self.logs:
                print(
                    f"--- {log.parent.name}: last lines of its log ---",
                    log.read_text(errors="replace")[-3000:],
                    sep="\n",
                    file=sys.stderr,
                )
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        from django.db import connections

        connections.close_all()
        if self.backend == "postgres":
            self._postgres(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
            self._redis().flushdb()
        self.folder.cleanup()

    @property
    def database(self):
        return f"bench_{self.name}"

    def _postgres(self, *statements):
        import psycopg

        with psycopg.connect(POSTGRES + "postgres", autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)

    def _redis(self):
        import redis

        return redis.Redis.from_url(f"{REDIS}{self.redis_db}")

    def serve(self):
        """Start the daphne process(es) and wait until each answers a page.

        The page matters: a process does its start-up work on its first request
        (chatsite/asgi.py: recovering the replies that dead processes left `streaming`),
        which must not land in the middle of a measurement.
        """
        var = Path(os.environ["CHATSITE_VAR_DIR"])
        for index in range(PROCESSES[self.backend]):
            folder = var / f"server{index}"  # start_server logs to $CHATSITE_VAR_DIR/server.log
            folder.mkdir()
            port = free_port()
            os.environ["CHATSITE_VAR_DIR"] = str(folder)
            try:
                self.processes.append(start_server(port))
            finally:
                os.environ["CHATSITE_VAR_DIR"] = str(var)
            self.ports.append(port)
            self.logs.append(folder / "server.log")
        for port in self.ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=30) as response:
                assert response.status == 200, response.status

    def warm_up(self):
        """One chat turn on each server process: a process loads the model on its first reply."""
        for index, outcome in enumerate(self.turn_on_each("warmup", "Hello!", {"max_new_tokens": 4}, timeout=300)):
            assert outcome == "complete", f"warm-up turn on server {index}: {outcome}"

    def turn_on_each(self, username, content, options, timeout):
        """A chat turn of a new user, on a new conversation and socket, on each server process: each outcome."""
        import websockets

        from conversations.models import Conversation

        ((user, cookie),) = self.users(1, username)

        async def chat(index, conversation_id):
            try:
                async with websockets.connect(
                    self.url(index, f"/ws/conversations/{conversation_id}/"),
                    additional_headers=self.headers(index, cookie),
                    open_timeout=30,
                ) as ws:
                    return (await turn(ws, content, options, timeout))["outcome"]
            except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed, TimeoutError) as exc:
                return type(exc).__name__

        conversations = [Conversation.objects.create(owner=user, model=self.spec).pk for _ in self.ports]
        return [asyncio.run(chat(index, pk)) for index, pk in enumerate(conversations)]

    def model(self):
        """The model every conversation of the run uses (the default), registered in the database."""
        from django.core.management import call_command

        from modelhub.models import ModelSpec

        ModelSpec.objects.update(is_default=False)
        if self.args.model == "builtin":
            call_command("ensure_builtin_model", stdout=open(os.devnull, "w"))
            self.spec = ModelSpec.objects.get(name="chitchat")
        else:
            self.spec = ModelSpec.objects.create(
                name="echo", backend="scripted", source="echo delay=0.02", is_default=True
            )
        return self.spec

    def users(self, count, prefix):
        """`count` new users, each logged in with its own session: [(user, session cookie)]."""
        from django.contrib.auth import get_user_model
        from django.test import Client

        users = []
        for index in range(count):
            user = get_user_model().objects.create(username=f"{prefix}{index}")
            client = Client()
            client.force_login(user)
            users.append((user, client.cookies["sessionid"].value))
        return users

    def url(self, index, path):
        """ws:// address of `path` on the server that client `index` talks to (clients alternate)."""
        return f"ws://127.0.0.1:{self.ports[index % len(self.ports)]}{path}"

    def headers(self, index, cookie):
        port = self.ports[index % len(self.ports)]
        return {"Origin": f"http://127.0.0.1:{port}", **({"Cookie": f"sessionid={cookie}"} if cookie else {})}

    def describe(self):
        postgres = self.backend == "postgres"
        return {
            "backend": self.backend,
            "processes": len(self.ports),
            "database_engine": f"PostgreSQL {POSTGRES}{self.database}" if postgres else "SQLite file",
            "channel_layer": f"Redis {REDIS}{self.redis_db}" if postgres else "in-memory",
            "model": MODELS[self.args.model],
            "server_env": self.env,
        }

    def tracebacks(self):
        """Tracebacks in the server logs: the count of lines starting with "Traceback", and for each
        exception type and the frame that raised it (the last `File` line above it), how many
        and the first one's message."""
        count, kinds = 0, {}
        for log in self.logs:
            lines = log.read_text(errors="replace").splitlines()
            for index, line in enumerate(lines):
                if not line.startswith("Traceback"):
                    continue
                count += 1
                where, end = "?", index + 1
                while end < len(lines) and (lines[end].startswith(" ") or not lines[end].strip()):
                    found = re.match(r'\s+File "(.+)", line (\d+), in (.+)', lines[end])
                    if found:
                        where = f"{_short(found[1])}:{found[2]} in {found[3]}"
                    end += 1
                error, _, message = lines[end].partition(":") if end < len(lines) else ("?", "", "")
                kind = kinds.setdefault(f"{error} at {where}", {"count": 0, "first_message": message.strip()[:200]})
                kind["count"] += 1
        return {"count": count, "by_type": dict(sorted(kinds.items(), key=lambda item: -item[1]["count"]))}


def _short(path):
    path = path.replace(str(ROOT) + "/", "")
    return re.sub(r".*/(site-packages|lib/python3\.\d+)/", "", path)
