"""Shared pieces: result rows, interleaved timing, the raw-I/O floor, test data, machine facts."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KB = 1024
MB = 1024 * 1024

# Nominal state sizes. --quick keeps the code paths and shrinks the data.
SIZES = {"1KB": KB, "1MB": MB, "10MB": 10 * MB, "50MB": 50 * MB}
QUICK_SIZES = {"1KB": KB, "64KB": 64 * KB, "256KB": 256 * KB, "1MB": MB}
RESOURCE_BYTES = 250  # encoded size of one generated resource: 50 MB is about 200,000 resources


@dataclass
class Config:
    quick: bool
    rounds: int
    workdir: Path

    @property
    def sizes(self) -> dict[str, int]:
        return QUICK_SIZES if self.quick else SIZES

    def samples(self, nbytes: int) -> int:
        """Timed repetitions for a case on a document of ``nbytes``: more for small, cheap cases."""
        if self.quick:
            return 1
        if nbytes <= 64 * KB:
            return self.rounds * 10
        if nbytes <= MB:
            return self.rounds * 3
        return self.rounds


@dataclass
class Row:
    """One line of the results: ``value`` compared with ``baseline`` measured in the same run."""

    bench: str
    name: str  # unique id, e.g. "size/load/1MB"
    what: str  # what ``value`` measures
    value: float
    baseline_what: str
    baseline: float
    unit: str  # "s", "bytes" or "ops/s"
    goal: str | None = None  # "<= 1.5" or ">= 0.9", on ``ratio``
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        if not self.goal:
            return None
        op, limit = self.goal.split()
        return self.ratio <= float(limit) if op == "<=" else self.ratio >= float(limit)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["met"] = self.met
        return d


# Two items as an agent's turn stores them: the SDK peer rows' batch (bench/disk.py, bench/sessions.py).
SDK_BATCH = [{"role": "user", "content": "Plan a trip to Lisbon."},
             {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
              "content": [{"type": "output_text", "text": "Day 1: Alfama. Day 2: Belem.", "annotations": []}]}]


def sdk_pair(cfg: Any, name: str) -> tuple[Any, Any] | None:
    """An AgentStateSession and the Agents SDK's SQLiteSession, session "peer", in ``cfg.workdir`` under
    ``name``; None if the SDK is not installed."""
    try:
        from agents.memory import SQLiteSession
    except ImportError:
        return None
    from agentstate.integrations.openai_agents import AgentStateSession

    return (AgentStateSession("peer", dir=cfg.workdir / name),
            SQLiteSession("peer", cfg.workdir / f"{name}-sqlite.db"))


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def interleaved(cases: dict[str, Callable[[], Any]], n: int, warmup: bool = True) -> dict[str, list[float]]:
    """Run each case ``n`` times, rotating the order every round so drift hits all alike.

    A case may return a dict of named durations (seconds) measured inside it; those are
    collected as "<case>.<name>" next to the case's own wall time.
    """
    names = list(cases)
    out: dict[str, list[float]] = {k: [] for k in names}
    if warmup:
        for k in names:
            cases[k]()
    for i in range(n):
        for k in names[i % len(names):] + names[: i % len(names)]:
            t0 = time.perf_counter()
            parts = cases[k]()
            out[k].append(time.perf_counter() - t0)
            if isinstance(parts, dict):
                for p, v in parts.items():
                    out.setdefault(f"{k}.{p}", []).append(v)
    return out


# --- the floor: what any crash-safe replace of these bytes costs -------------------------------

def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def raw_commit(directory: str, name: str, data: bytes) -> None:
    """Raw write + fsync + rename + directory fsync: the durable-replace floor."""
    path = os.path.join(directory, name)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- test data -------------------------------------------------------------------------------

def make_resources(nbytes: int) -> dict[str, Any]:
    """Resources whose encoding is about ``nbytes``: ~250-byte agent records, plus a counter."""
    n = max(1, nbytes // RESOURCE_BYTES)
    res: dict[str, Any] = {"counter": 0}
    for i in range(n):
        res[f"agent.a{i:06d}"] = {
            "kind": "agent",
            "model": f"model-{i % 17}",
            "n": i,
            "temperature": 0.25 + (i % 4) / 10,
            "tags": ["worker", f"shard-{i % 8}", "v2"],
            "config": {"retries": 3, "timeout_s": 30, "prompt": f"task {i} " + "x" * 90},
        }
    return res


def seed_store(path: Path, nbytes: int):
    """A StateStore at ``path`` holding make_resources(nbytes); returns the store."""
    from agentstate import StateStore

    store = StateStore(path)
    with store.transaction() as st:
        st.resources.update(make_resources(nbytes))
    return store


def human(nbytes: float) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", MB), ("KB", KB)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"


def fmt_value(v: float, unit: str) -> str:
    if unit == "s":
        if v < 1e-3:
            return f"{v * 1e6:.0f} µs"
        if v < 1:
            return f"{v * 1e3:.2f} ms"
        return f"{v:.2f} s"
    if unit == "bytes":
        return human(v)
    if unit == "ops/s":
        return f"{v:.0f}/s"
    return f"{v:g} {unit}"


# --- subprocesses ------------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("AGENTSTATE_LOG_LEVEL", None)
    return env


@contextlib.contextmanager
def workers_started(argvs: list[list[str]], duration: float) -> Iterator[tuple[list[subprocess.Popen], float, float]]:
    """Start one worker process per argv, wait until each says "ready" (the barrier), then send all
    of them "go START END" (time.monotonic, START 50 ms ahead); kill any still running on the way out."""
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env=child_env()) for argv in argvs]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"worker did not start: {line!r} {p.stderr.read()[-2000:]}")
        start = time.monotonic() + 0.05
        end = start + duration
        for p in procs:
            p.stdin.write(f"go {start!r} {end!r}\n")
            p.stdin.flush()
        yield procs, start, end
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def await_go() -> tuple[float, float]:
    """The worker's side of workers_started: say "ready", read "go START END", sleep until START."""
    print("ready", flush=True)
    _, start, end = sys.stdin.readline().split()
    start, end = float(start), float(end)
    while time.monotonic() < start:
        time.sleep(min(0.001, max(0.0, start - time.monotonic())))
    return start, end


def agentstate_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "agentstate"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "agentstate"]


# --- the machine -----------------------------------------------------------------------------

def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(workdir: Path) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    df = _run(["df", "-T", str(workdir)]).splitlines()
    fs = df[-1].split() if len(df) >= 2 else []
    mount_opts = ""
    if fs:
        try:
            for line in Path("/proc/mounts").read_text().splitlines():
                parts = line.split()
                if parts[0] == fs[0] and parts[1] == fs[-1]:
                    mount_opts = parts[3]
        except OSError:
            pass
    try:
        import orjson

        orjson_version = orjson.__version__
    except Exception:  # pragma: no cover
        orjson_version = "?"
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = human(int(line.split()[1]) * KB)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "filesystem": fs[1] if len(fs) > 1 else "?",
        "device": fs[0] if fs else "?",
        "mount_options": mount_opts,
        "workdir": str(workdir),
        "orjson": orjson_version,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "disk_free": shutil.disk_usage(workdir).free,
    }


def finite_positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0
