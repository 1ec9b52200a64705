"""CLI start-up: `agentstate show --json` and `agentstate apply --set` against `python -c "import typer"`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .common import KB, Config, Row, agentstate_cmd, child_env, interleaved, median, seed_store


def _timed(cmd: list[str], env: dict[str, str], check_json: bool = False) -> None:
    p = subprocess.run(cmd, capture_output=True, env=env, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    if check_json:
        json.loads(p.stdout)


def _byte_compile() -> None:
    """Compile agentstate's modules as `pip install` does: an editable checkout run under
    PYTHONDONTWRITEBYTECODE=1 would otherwise recompile every module on every start."""
    import compileall

    import agentstate

    compileall.compile_dir(str(Path(agentstate.__file__).parent), quiet=1)


def run(cfg: Config) -> list[Row]:
    _byte_compile()
    store = seed_store(cfg.workdir / "cli-store", KB)
    env = child_env()
    cli = agentstate_cmd()
    counter = iter(range(1, 1 << 30))
    cases = {
        "show": lambda: _timed([*cli, "show", "--json", "--dir", store.path], env, check_json=True),
        "typer": lambda: _timed([sys.executable, "-c", "import typer"], env),
        "apply": lambda: _timed([*cli, "apply", "--set", f"bench.n={next(counter)}", "--dir", store.path], env),
        "python": lambda: _timed([sys.executable, "-c", "pass"], env),
    }
    n = 1 if cfg.quick else max(20, cfg.rounds * 4)
    t0 = time.perf_counter()
    t = interleaved(cases, n, warmup=not cfg.quick)
    ex = {"runs": n, "command": " ".join(cli), "wall_s": time.perf_counter() - t0}
    if store.read().resources.get("bench.n") != next(counter) - 1:
        raise RuntimeError("agentstate apply --set did not persist its last value")
    show = median(t["show"])
    return [
        Row("cli", "cli/show", "agentstate show --json (1 KB store)", show,
            'python -c "import typer"', median(t["typer"]), "s", "<= 1.3", extra=ex),
        Row("cli", "cli/apply", "agentstate apply --set A=V (1 KB store, end to end)", median(t["apply"]),
            "agentstate show --json", show, "s", note="report only", extra=ex),
        Row("cli", "cli/bare-python", 'python -c "pass"', median(t["python"]),
            'python -c "import typer"', median(t["typer"]), "s", note="context", extra=ex),
    ]
