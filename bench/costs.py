"""What a wave of a serving bench cost each process of the run, and where the run's processes may run.

`measured(wave, roles, vllm)` waits until every process of the run is idle, runs the wave, and adds to its
figures the CPU seconds each role's processes spent meanwhile (from /proc), the rest of the machine's, and
vLLM's own step time and steps (its /metrics). `lay_out(layout, pins)` pins processes to cores with taskset
(bench/scale.py's two layouts).
"""

import asyncio
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

from live import ms

TICK = os.sysconf("SC_CLK_TCK")


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:  # the process is gone
        return ""


def cpu_snapshot(roles):
    """CPU seconds so far of each role's processes, of PostgreSQL's (the whole server's) and of the machine."""

    def seconds(pid):
        stat = _read(f"/proc/{pid}/stat")
        fields = stat[stat.rindex(")") + 2 :].split() if stat else [0] * 13
        return (int(fields[11]) + int(fields[12])) / TICK

    postgres = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _read(p / "comm") == "postgres\n"]
    snapshot = {role: sum(map(seconds, pids)) for role, pids in {**roles, "postgres": postgres}.items()}
    times = [int(x) for x in _read("/proc/stat").split("\n")[0].split()[1:9]]
    snapshot["machine"] = (sum(times) - times[3] - times[4]) / TICK  # all but idle and iowait
    return snapshot


def vllm_counters(server):
    names = (
        "inter_token_latency_seconds_sum",
        "inter_token_latency_seconds_count",
        "iteration_tokens_total_count",
        "time_to_first_token_seconds_sum",
        "time_to_first_token_seconds_count",
    )
    with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/metrics", timeout=30) as response:
        text = response.read().decode()
    found = dict.fromkeys(names, 0.0)
    for name, value in re.findall(r"^vllm:(\w+)\{[^}]*\} (\S+)$", text, re.M):
        if name in found:
            found[name] += float(value)
    return found


async def quiet(roles, limit=10.0):
    """Wait until the run's processes are idle (at most `limit` seconds): after its last request vLLM's
    engine spins a core for about a second, which the next wave must not share."""
    deadline, before = time.monotonic() + limit, cpu_snapshot(roles)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = cpu_snapshot(roles)
        if sum(now[role] - before[role] for role in roles) < 0.03:
            return
        before = now


async def measured(wave, roles, vllm):
    """Run a wave once all is quiet; add its wall time, what every process spent meanwhile, vLLM's step time."""
    await quiet(roles)
    cpu, counters = cpu_snapshot(roles), vllm_counters(vllm)
    figures = await wave
    after, later = cpu_snapshot(roles), vllm_counters(vllm)
    figures["wall"] = max(figures["e2e"])
    spent = {role: round(after[role] - cpu[role], 2) for role in cpu}
    spent["rest of the machine"] = round(spent.pop("machine") - sum(spent.values()), 2)
    figures["cpu_s"] = spent
    delta = {name: later[name] - counters[name] for name in later}
    per = lambda name: ms(delta[f"{name}_sum"] / max(delta[f"{name}_count"], 1))  # noqa: E731
    figures["vllm"] = {
        "steps": int(delta["iteration_tokens_total_count"]),
        "step_ms": per("inter_token_latency_seconds"),
        "ttft_ms": per("time_to_first_token_seconds"),
    }
    return figures


def lay_out(layout, pins):
    """Pin each process (every thread of it) as `layout` says: `pins` maps a core list to its processes."""
    for cores, pids in pins.items():
        for pid in pids:
            cpus = cores if layout == "pinned" else f"0-{os.cpu_count() - 1}"
            subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True)
