"""Helper process for the lock integration tests: takes a store's lock and holds it.

    python lock_holder.py DIR [--hold S] [--transaction] [--fork] [--child-exit release|exit|sleep]

Prints the holder record as one JSON line on stdout once it holds the lock, then holds it for
``--hold`` seconds (or until stdin reaches EOF when --hold is 0), releases it and prints
``released``. Logs go to stderr at INFO.

``--transaction`` holds it inside ``StateStore(DIR).transaction()`` (incrementing ``counter``).
``--fork`` forks once the lock is held; the child calls ``release()`` then exits
(``--child-exit exit``: sys.exit; ``release``: release() then os._exit; ``sleep``: release()
and sleeps 60 s, printing ``child PID`` on stdout first). The parent prints ``forked CHILDPID STATUS``
(STATUS: the child's exit code, 0 for ``sleep``)
after the child has released (or started sleeping), then holds as usual.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--hold", type=float, default=0.0)
    ap.add_argument("--transaction", action="store_true")
    ap.add_argument("--fork", action="store_true")
    ap.add_argument("--child-exit", default="release", choices=["release", "exit", "sleep"])
    args = ap.parse_args()

    from agentstate import logs
    from agentstate.state.store import StateStore

    logs.configure("info")
    store = StateStore(args.dir)
    if args.transaction:
        with store.transaction(lock_timeout=30, operation="holder") as state:
            state.resources["counter"] = state.resources.get("counter", 0) + 1
            announce(store)
            hold(args)
    else:
        from agentstate.state.fileio import ensure_dir

        ensure_dir(store.files, store.path)
        lk = store.lock()
        lk.acquire(30, "holder")
        announce(store)
        if args.fork:
            fork_child(lk, args.child_exit)
        hold(args)
        lk.release()
    print("released", flush=True)


def announce(store) -> None:
    with open(store.lock_path, "rb") as f:
        record = json.loads(f.read())
    print(json.dumps(record), flush=True)


def hold(args) -> None:
    if args.hold > 0:
        time.sleep(args.hold)
    else:
        sys.stdin.read()


def fork_child(lk, how: str) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        lk.release()  # must not release the parent's lock
        if how == "exit":
            os.write(w, b"x")
            sys.stdout.flush()
            sys.exit(0)  # a normal interpreter exit: atexit handlers, finalizers
        if how == "sleep":
            os.write(w, b"x")
            time.sleep(60)
        else:
            os.write(w, b"x")
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    status = 0
    if how != "sleep":
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print(f"forked {pid} {status}", flush=True)


if __name__ == "__main__":
    main()
