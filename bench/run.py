"""``python -m bench``: run the suite, print medians and ratios, optionally write results and docs."""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, Config, Row, finite_positive, fmt_value, machine_info

# The registry: benchmark name -> module in bench/ whose ``run(cfg: Config) -> list[Row]`` it calls.
# To add a benchmark, write bench/<module>.py and add one line here (modules are imported only
# when their benchmark runs, so an optional dependency does not burden the others).
BENCHMARKS: dict[str, str] = {
    "floor": "floor",
    "size": "sizes",
    "contention": "contention",
    "cli": "cli_start",
    "peers": "peers",
    "pg": "pg",
    "sessions": "sessions",
    "responses": "responses",
    "serve": "serve",
    "fleet": "fleet",
    "disk": "disk",
}


def benchmark(name: str):
    """The ``run`` function of the registered benchmark ``name``."""
    return importlib.import_module(f".{BENCHMARKS[name]}", __package__).run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="smoke mode: one iteration of everything, small sizes (1 KB .. 1 MB)")
    ap.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                    help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    ap.add_argument("--rounds", type=int, default=5,
                    help="repetitions of the large cases (small ones run 3-20x as many); default 5")
    ap.add_argument("--out", type=Path, help="write results.json (and latency.png) into this directory")
    ap.add_argument("--workdir", type=Path,
                    help="where the stores are created (default: the system temp dir); its filesystem matters")
    ap.add_argument("--write-docs", action="store_true",
                    help="regenerate docs/performance.md and docs/latency.png (full runs only)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.write_docs and (args.quick or args.only):
        ap.error("--write-docs needs a full run (no --quick, no --only)")
    return args


def table(rows: list[Row]) -> str:
    head = ("benchmark", "measured", "median", "baseline", "median", "ratio", "goal", "")
    lines = [head]
    for r in rows:
        mark = {True: "ok", False: "MISSED", None: r.note}[r.met]
        lines.append((r.name, r.what, fmt_value(r.value, r.unit), r.baseline_what, fmt_value(r.baseline, r.unit),
                      f"{r.ratio:.2f}x", r.goal or "-", mark))
    widths = [min(max(len(str(x[i])) for x in lines), 60) for i in range(len(head))]
    out = []
    for x in lines:
        out.append("  ".join(str(c)[:60].ljust(w) for c, w in zip(x, widths, strict=True)).rstrip())
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(BENCHMARKS)
    base = Path(tempfile.mkdtemp(prefix="agentstate-bench-", dir=args.workdir))
    cfg = Config(quick=args.quick, rounds=1 if args.quick else args.rounds, workdir=base)
    info = machine_info(base)
    print(f"agentstate bench: {', '.join(names)}{' (quick)' if args.quick else ''}; "
          f"{info['cores']} cores, Python {info['python']}, {info['filesystem']} at {base}", flush=True)
    if info["filesystem"] in ("tmpfs", "ramfs", "overlay"):
        print(f"warning: {base} is on {info['filesystem']}; fsync costs differ from a disk (use --workdir)",
              file=sys.stderr)
    rows: list[Row] = []
    timings = {}
    try:
        for name in names:
            t0 = time.perf_counter()
            print(f"-- {name} ...", flush=True)
            got = benchmark(name)(cfg)
            timings[name] = time.perf_counter() - t0
            for r in got:
                if not (finite_positive(r.value) and finite_positive(r.baseline)):
                    raise RuntimeError(f"{r.name}: non-positive measurement {r.value!r} / {r.baseline!r}")
            rows += got
            print(table(got), flush=True)
            print(f"   ({timings[name]:.1f}s)", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "rounds": cfg.rounds,
        "machine": info,
        "benchmark_seconds": timings,
        "rows": [r.to_dict() for r in rows],
    }
    missed = [r.name for r in rows if r.met is False]
    print(f"\n{sum(r.met is True for r in rows)} goals met, {len(missed)} missed"
          + (f": {', '.join(missed)}" if missed else ""))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        from . import report

        if report.plot(results, args.out / "latency.png"):
            print(f"wrote {args.out / 'results.json'} and {args.out / 'latency.png'}")
        else:
            print(f"wrote {args.out / 'results.json'} (no plot: matplotlib is not installed)")
    if args.write_docs:
        from . import report

        docs = REPO / "docs"
        if not report.plot(results, docs / "latency.png"):
            print("error: --write-docs needs matplotlib (pip install -e '.[plot]')", file=sys.stderr)
            return 1
        doc = docs / "performance.md"
        doc.write_text(report.markdown(results, report.kept(doc.read_text() if doc.exists() else "")))
        print(f"wrote {docs / 'performance.md'} and {docs / 'latency.png'}")
    return 0
