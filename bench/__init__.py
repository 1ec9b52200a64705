"""agentstate's benchmark suite (not part of the test run).

Run it from the repository root::

    .venv/bin/python -m bench                 # the full suite, a few minutes
    .venv/bin/python -m bench --quick         # one iteration of everything at small sizes (smoke)
    .venv/bin/python -m bench --only floor    # one benchmark: floor, size, contention, cli, peers
    .venv/bin/python -m bench --write-docs    # regenerate docs/performance.md and docs/latency.png

Every claim is a ratio between two things measured side by side (interleaved) in the
same run, never an absolute time. See docs/performance.md.
"""
