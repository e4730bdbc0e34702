"""Real servers for tests of the setups users run, over real sockets.

    site = Site(tmp_path, database=PostgresDatabase(), redis=RedisServer(tmp_path))
    site.setup(SETUP_CODE)              # run Django code on the migrated database (users, models, sessions)
    a, b = site.server(), site.server()  # two daphne processes on one database and one Redis
    ...
    b.kill()                            # SIGKILL; a.stop() is SIGTERM

`Site` owns what the servers share: a var folder, the database (a SQLite file, or a
PostgreSQL database made for the test and dropped after it) and the channel layer
(in memory, or a Redis server of the test's own on its own port, which a test may
stop and start again). `TcpProxy` stands between the servers and PostgreSQL so a
test can make the database unreachable for a while.

A PostgreSQL database of a test is `tests.postgres.PostgresDatabase`.
"""

import asyncio
import atexit
import functools
import http.server
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, process=None, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process for port {port} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class RedisServer:
    """A redis-server of the test's own (no persistence, like the deployed default)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.port = free_port()
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process)
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def migrate(database_url):
    """`manage.py migrate` on this database, in a process of its own (as an operator runs it)."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "SECRET_KEY": "live-tests-secret-key-0123456789abcdefghijklmnop",
    }
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )


@functools.cache  # once a test session: every site's database starts as a copy of it
def migrated_sqlite():
    """A SQLite database migrated once for the session, which each site copies instead of migrating again."""
    folder = Path(tempfile.mkdtemp(prefix="chatsite-sqlite-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    migrate(f"sqlite:///{folder / 'db.sqlite3'}")
    return folder / "db.sqlite3"


class SqliteDatabase:
    def __init__(self, folder, migrated=True):
        self.path = Path(folder) / "db.sqlite3"
        self.migrated = migrated  # False: an empty database, as before the first `migrate`

    def url(self, port=None):
        return f"sqlite:///{self.path}"

    def create(self):
        """A migrated database: the session's template, copied (the backup API reads its WAL too)."""
        if self.migrated:
            with sqlite3.connect(migrated_sqlite()) as template, sqlite3.connect(self.path) as copy:
                template.backup(copy)
        return self

    def drop(self):
        pass

    def rows(self, sql, params=()):
        with sqlite3.connect(self.path, timeout=20) as connection:
            return connection.execute(sql.replace("%s", "?"), params).fetchall()


@contextmanager
def http_server(handler):
    """A real HTTP server on a free local port, answering with `handler` (an http.server request handler
    class) from a thread of its own, for as long as the block runs: its base URL, ".../v1"."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()


class Site:
    """What the servers of one test share: settings, a database and a channel layer."""

    def __init__(self, folder, database=None, redis=None, database_url=None, **settings):
        self.folder = Path(folder)
        self.database = (database or SqliteDatabase(self.folder)).create()
        self.redis = redis.start() if redis is not None else None
        self.env = {
            **os.environ,
            "CHATSITE_VAR_DIR": str(self.folder),
            "SECRET_KEY": "live-tests-secret-key-0123456789abcdefghijklmnop",
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "MODELHUB_TORCH_THREADS": "1",
            "DATABASE_URL": database_url or self.database.url(),
            **{key: str(value) for key, value in settings.items()},
        }
        if self.redis is not None:
            self.env["REDIS_URL"] = self.redis.url
        else:
            self.env.pop("REDIS_URL", None)
        self.servers = []

    def manage(self, *args, **kwargs):
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env=self.env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            **kwargs,
        )

    def setup(self, code):
        """Run `code` in a Django shell (the database is migrated already); returns what it printed as JSON,
        if anything."""
        lines = self.manage("shell", "-v0", "-c", code).stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else None

    def rows(self, sql, params=()):
        return self.database.rows(sql, params)

    def server(self, **settings):
        server = Server(self, {key: str(value) for key, value in settings.items()}).start()
        self.servers.append(server)
        return server

    def worker(self, *models, **settings):
        """A model worker process (`manage.py modelhub_worker`) serving these models (none named: all)."""
        worker = ModelWorker(self, {key: str(value) for key, value in settings.items()}, models).start()
        self.servers.append(worker)
        return worker

    def close(self):
        for server in self.servers:
            server.kill()
            print(f"--- log of the server on port {server.port} (shown if the test failed) ---")
            print(server.log[-6000:])
        if self.redis is not None:
            self.redis.stop()
        self.database.drop()


class Server:
    """One daphne process serving chatsite.asgi on its own port; its log is kept in the site's folder."""

    def __init__(self, site, settings):
        self.site = site
        self.settings = settings
        self.port = free_port()
        self.log_path = site.folder / f"server-{self.port}.log"
        self.process = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "chatsite.asgi:application"],
                env={**self.site.env, **self.settings},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.process)
        return self

    def restart(self):
        """Start again on the same port (after stop or kill), as a process manager would."""
        self.kill()
        return self.start()

    def stop(self, timeout=30):
        """SIGTERM, as a process manager stops a server; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    @property
    def log(self):
        return self.log_path.read_text(errors="replace")


class ModelWorker(Server):
    """One `manage.py modelhub_worker` process; like a Server, but it listens on the channel layer, not a port."""

    def __init__(self, site, settings, models):
        super().__init__(site, settings)
        self.models = models
        self.log_path = site.folder / f"worker-{self.port}.log"

    def start(self):
        command = [sys.executable, str(ROOT / "manage.py"), "modelhub_worker"]
        if self.models:
            command += ["--models", *self.models]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env={**self.site.env, **self.settings}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while "ready: serving" not in self.log:  # its receive loops run
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the model worker did not start:\n{self.log[-3000:]}")
            time.sleep(0.1)
        return self

    @property
    def pid(self):
        return self.process.pid


def session_code(username, password="live-pass-123", **user_fields):
    """Django shell code that makes a user and prints nothing; `session_for(username)` gives its cookie."""
    fields = ", ".join(f"{key}={value!r}" for key, value in user_fields.items())
    return f"User.objects.create_user({username!r}, password={password!r}{', ' + fields if fields else ''})\n"


SHELL_PRELUDE = """
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore

def session_for(username):
    user = User.objects.get(username=username)
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return store.session_key
"""


# --- websocket clients ---------------------------------------------------------


async def open_socket(server, cookie, conversation_id, origin=None):
    import websockets

    headers = {"Cookie": f"sessionid={cookie}", "Origin": origin or server.url}
    return await websockets.connect(
        f"ws://127.0.0.1:{server.port}/ws/conversations/{conversation_id}/", additional_headers=headers, max_size=2**22
    )


async def frames_until(ws, predicate, timeout=30):
    """Frames up to and including the first for which `predicate(frame)` holds (a type name works too)."""
    if isinstance(predicate, str):
        kind = predicate
        predicate = lambda frame: frame["type"] == kind  # noqa: E731
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no matching frame within {timeout} s; got {[f['type'] for f in frames]}")
        frame = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        frames.append(frame)
        if predicate(frame):
            return frames


def text_of(frames, message_id):
    """The reply's text as a client assembles it from chunk frames (offsets are UTF-16 units; ASCII here)."""
    text = ""
    for frame in frames:
        if frame["type"] == "chunk" and frame["message_id"] == message_id:
            assert frame["offset"] <= len(text), "a chunk skipped text"
            text = text[: frame["offset"]] + frame["text"]
    return text


# --- a database that goes away ---------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` drops every connection and refuses new ones until `restore()`.
    `delay`: seconds added to every answer of the target (a database that answers slowly, or far away)."""

    def __init__(self, target_port, target_host="127.0.0.1", delay=0.0):
        self.target = (target_host, target_port)
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs = []
        self.lock = threading.Lock()
        self.open = True
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client, upstream):
        sockets = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is upstream and self.delay:
                        time.sleep(self.delay)
                    (upstream if sock is client else client).sendall(data)
        except (OSError, ValueError):  # cut: the sockets were closed under this thread
            return
        finally:
            for sock in sockets:
                sock.close()

    def cut(self):
        self.open = False
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def restore(self):
        self.open = True

    def close(self):
        self.closed = True
        self.cut()
        self.listener.close()
