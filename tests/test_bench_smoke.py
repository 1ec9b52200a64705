"""The benchmark suite's smoke mode runs end to end and reports every row (no timing is asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

QUICK_SIZES = ["1KB", "64KB", "256KB", "1MB"]
EXPECTED = (
    ["floor/transaction/1KB", "floor/lock-only/1KB", "floor/read-only/1KB", "floor/lean/1KB", "size/first-save"]
    + [f"size/{op}/{s}" for s in QUICK_SIZES for op in ("load", "transaction", "save")]
    + [f"size/mem-{op}{vs}/1MB" for op in ("load", "transaction", "save") for vs in ("", "-vs-raw")]
    + ["contention/raw-floor", "contention/throughput", "contention/worst-wait"]
    + ["cli/show", "cli/apply", "cli/bare-python"]
    + [f"peers/{p}/{s}" for s in QUICK_SIZES[:3]
       for p in ("sqlite-doc", "sqlite-rows", "tinydb", "json-replace", "raw-floor")]
    + [f"pg/{r}" for r in ("txn-1KB-vs-floor", "txn-1KB-vs-local", "append-vs-floor", "append-vs-local",
                           "contention", "append-16-own-vs-plain", "append-scaling", "append-16-one-session")]
    + [f"sessions/{r}" for r in ("append-flat", "append-vs-floor", "context20", "list50", "contention",
                                 "sdk-add_items", "sdk-get_items20")]
    + [f"responses/{r}" for r in ("chain-1000", "chain-10000", "chain-10000-full", "chain-10000-query", "save")]
    + [f"serve/{r}" for r in ("throughput", "write-tx-per-append", "append-p50", "append-p99")]
    + [f"fleet/{r}" for r in ("where-sqlite", "where-pg", "context20-hot-vs-pg", "context20-hot-vs-dir",
                              "zipf-hit-rate")]
    + [f"disk/{r}" for r in ("append-vs-floor", "append-design-floor", "sdk-add_items", "threads", "processes", "transaction/1KB",
                             "load/1KB", "cli-sessions-show")]
)
GOALS = {
    "floor/transaction/1KB": "<= 1.25",
    "size/first-save": "<= 1.5",
    "size/load/1MB": "<= 1.3",
    "size/transaction/1MB": "<= 1.5",
    "size/save/1MB": "<= 1.5",
    "size/mem-load/1MB": "<= 3",
    "contention/throughput": ">= 0.9",
    "cli/show": "<= 1.3",
    "pg/contention": ">= 0.9",
    "pg/append-16-own-vs-plain": ">= 0.5",
    "pg/append-scaling": ">= 0.8",
    "pg/append-16-one-session": ">= 0.8",
    "sessions/append-flat": "<= 1.2",
    "sessions/contention": ">= 0.9",
    "serve/throughput": ">= 1.0",
    "serve/write-tx-per-append": "<= 0.5",
    "fleet/context20-hot-vs-pg": "<= 0.5",
    "disk/append-vs-floor": "<= 1.6",
    "disk/sdk-add_items": "<= 1.25",
    "disk/threads": ">= 1.5",
    "disk/processes": ">= 0.9",
    "disk/transaction/1KB": "<= 1.4",
    "disk/load/1KB": "<= 1.5",
    "disk/cli-sessions-show": "<= 1.35",
}


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_quick_mode_produces_every_row(tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True
    rows = {r["name"]: r for r in results["rows"]}
    assert sorted(rows) == sorted(EXPECTED)
    assert len(results["rows"]) == len(EXPECTED)  # no duplicates
    for name, r in rows.items():
        for key in ("value", "baseline", "ratio"):
            assert _positive(r[key]), (name, key, r[key])
        assert math.isclose(r["ratio"], r["value"] / r["baseline"]), name
        assert r["met"] in (True, False, None)
        assert (r["met"] is None) == (r["goal"] is None), name
    for name, goal in GOALS.items():
        assert rows[name]["goal"] == goal, name
    # every row is printed, with its ratio
    for name in EXPECTED:
        assert name in p.stdout, name
    assert rows["contention/throughput"]["extra"]["committed_total"] > 0
    assert rows["size/mem-load/1MB"]["baseline"] == rows["size/mem-load/1MB"]["extra"]["file_bytes"] > 1_000_000
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the stores were created under --workdir and removed afterwards
    assert not any(tmp_path.glob("agentstate-bench-*"))
    _regenerating_keeps_the_part_measured_by_hand(results)


def _regenerating_keeps_the_part_measured_by_hand(results: dict) -> None:
    """--write-docs rewrites docs/performance.md from the run, and carries over its part measured by hand."""
    from bench import report

    current = (REPO / "docs" / "performance.md").read_text()
    by_hand = report.kept(current)
    assert "## One disk (issue 17)" in by_hand and by_hand.startswith(report.KEPT_BEGIN)
    new = report.markdown(results, by_hand)
    assert new.count(by_hand) == 1 and report.kept(new) == by_hand
    assert report.kept(report.markdown(results, report.kept(new))) == by_hand  # and again, unchanged
    assert new.index(by_hand) < new.index("## Where goals are missed in this run")
    assert report.kept("no markers here") == "" and report.kept(report.KEPT_BEGIN + " but no end") == ""


def test_write_docs_refuses_partial_runs() -> None:
    p = subprocess.run([sys.executable, "-m", "bench", "--quick", "--write-docs"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "--write-docs needs a full run" in p.stderr
