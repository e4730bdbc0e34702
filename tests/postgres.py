"""PostgreSQL for the live tests: a database made for a test and dropped after it (`PostgresDatabase`), on
the machine's own server at 127.0.0.1:5432 (user postgres, no password, as CI runs it) when it answers
there; otherwise `postgres_server()` starts a throwaway cluster of the test session's own, installing
Debian's postgresql package first if it is missing, and removes it when the session ends.
CHATSITE_TEST_PG_PORT names another port to look at instead of 5432.
"""

import atexit
import functools
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.live import free_port, migrate

PG_USER = "postgres"


@functools.cache  # once a test session: the first test that needs PostgreSQL decides, the others share it
def postgres_server():
    """(host, port) of the PostgreSQL server live tests make their databases on: the machine's own at
    127.0.0.1:5432 (or CHATSITE_TEST_PG_PORT) when it accepts connections, else a throwaway cluster
    started now and removed when the session ends."""
    port = int(os.environ.get("CHATSITE_TEST_PG_PORT", "5432"))
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return "127.0.0.1", port
    except OSError:
        pass
    cluster = ThrowawayPostgres().start()
    atexit.register(cluster.stop)
    return cluster.address


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temp folder, on a free port, trusting local connections as user postgres.

    initdb refuses to run as root, so as root the server runs as the `postgres` system user that Debian's
    package creates (the package is installed first if there is no initdb, as the Makefile installs Chromium)."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="chatsite-postgres-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        self.as_user = ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []

    def start(self):
        bin_dir = _postgres_bin_dir()
        if self.as_user:
            shutil.chown(self.folder, PG_USER, PG_USER)
        self._run(bin_dir / "initdb", "-D", self.data, "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        self._run(bin_dir / "pg_ctl", "-D", self.data, "-l", self.folder / "log", "-o", options, "-w", "start")
        return self

    def stop(self):
        if (self.data / "postmaster.pid").exists():
            self._run(_postgres_bin_dir() / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, *command):
        done = subprocess.run([*self.as_user, *map(str, command)], capture_output=True, text=True)
        if done.returncode != 0:
            log = self.folder / "log"
            raise RuntimeError(
                f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr or done.stdout}"
                + (log.read_text(errors="replace")[-2000:] if log.exists() else "")
            )


def _postgres_bin_dir():
    """Debian's /usr/lib/postgresql/<newest>/bin, installing the postgresql package if it is not there."""
    found = _postgres_bin_dirs()
    if not found:
        subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null",
            shell=True,
            check=True,
        )
        found = _postgres_bin_dirs()
    if not found:
        raise RuntimeError("no PostgreSQL server to start: /usr/lib/postgresql/*/bin/initdb not found")
    return found[-1]


def _postgres_bin_dirs():
    folders = [Path(initdb).parent for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    return sorted(folders, key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0)


@functools.cache  # once a test session per server
def migrated_template(host, port):
    """The name of a database migrated once for the session on this server, which each test's copies."""
    template = PostgresDatabase(host, port, name=f"chatsite_template_{uuid.uuid4().hex[:12]}")
    template._admin(f'CREATE DATABASE "{template.name}"')
    atexit.register(template.drop)
    migrate(template.url())
    return template.name


class PostgresDatabase:
    """A PostgreSQL database made for one test module on `postgres_server()`, dropped afterwards."""

    def __init__(self, host=None, port=None, name=None):
        self.name = name or f"chatsite_live_{uuid.uuid4().hex[:12]}"
        self.host, self.port = (host, port) if host else postgres_server()

    def url(self, port=None):
        return f"postgres://{PG_USER}@{self.host}:{port or self.port}/{self.name}"

    def _connect(self, dbname, **options):
        import psycopg

        return psycopg.connect(dbname=dbname, host=self.host, port=self.port, user=PG_USER, **options)

    def _admin(self, sql):
        with self._connect("postgres", autocommit=True) as connection:
            connection.execute(sql)

    def create(self):
        """A migrated database: a copy of the session's template on this server (CREATE DATABASE … TEMPLATE)."""
        template = migrated_template(self.host, self.port)
        self._admin(f'CREATE DATABASE "{self.name}" TEMPLATE "{template}"')
        return self

    def drop(self):
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def rows(self, sql, params=()):
        with self._connect(self.name) as connection:
            return connection.execute(sql, params).fetchall()
