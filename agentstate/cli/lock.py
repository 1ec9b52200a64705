"""Lock commands: `lock status` and `force-unlock`. The policy (alive, stale, what to run next) is the
library's (Lock.status()); these only render it."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import EXIT_CODES, Command, Group, Opts, UsageError, emit_json, out, run

app = typer.Typer()
lock_app = typer.Typer(cls=Group, help="Inspect the store's lock.\n\n" + EXIT_CODES, no_args_is_help=False)
app.add_typer(lock_app, name="lock")


@lock_app.callback(invoke_without_command=True)
def _lock_root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        raise UsageError("missing command: use `agentstate lock status`; see `agentstate lock --help`")


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "an unknown holder"
    import orjson

    from ..state.lock import Holder

    h = Holder.parse(orjson.dumps(record))
    return h.describe() if h else "an unknown holder"


def _database_lock(o: Opts, store: Any) -> dict[str, Any]:
    """The status of the sessions/responses database's lock: agentstate.db.lock beside state.json, or the
    PostgreSQL advisory lock of the database's writers."""
    if o.url is not None:
        from ..sql import open_database

        db = open_database(o.url)
        try:
            return db.lock_status()
        finally:
            db.close()
    import os

    from ..state.lock import Lock

    return Lock(os.path.join(os.path.dirname(store.lock_path), "agentstate.db.lock")).status()


def _render(st: dict[str, Any], label: str) -> None:
    where = st.get("path") or st.get("lock") or ""
    if not st["held"]:
        out(f"{label}free ({where})")
        if st.get("last_holder"):
            out(f"{label}last holder, which ended without releasing: {_describe(st['last_holder'])}")
    else:
        out(f"{label}held by {_describe(st.get('holder'))}")
        if st.get("holder"):
            alive = {True: "alive", False: "not running", None: "cannot tell (another host or PID namespace)"}
            out(f"{label}holder process: {alive.get(st.get('holder_alive'), '?')}")
    for h in (st.get("holders") or [])[1:] if st.get("held") else []:  # PostgreSQL: every session/chain lock held
        out(f"{label}also held: {h.get('resource')} by PID {h.get('pid')} on {h.get('hostname')} "
            f"(operation {h.get('operation')!r}, lock ID {h.get('lock_id')})")
    if st.get("next"):
        out(f"{label}next: {st['next']}")


@lock_app.command("status", cls=Command, epilog=EXIT_CODES)
def lock_status() -> None:
    """Show both locks of the store: the state document's (first, and the top-level keys of --json) and the
    sessions/responses database's ("database" in --json): free or held (the kernel's answer), by whom,
    and what to do next."""

    def body(o: Opts) -> None:
        store = o.store()
        st = store.lock_status()
        db = _database_lock(o, store)
        if o.json:
            emit_json({**st, "database": db})
            return
        _render(st, "")
        _render(db, "database lock (sessions, responses): ")

    run(body)


@app.command("force-unlock", cls=Command, epilog=EXIT_CODES)
def force_unlock(
    lock_id: Annotated[str, typer.Argument(help="The lock ID from `agentstate lock status`.")],
    force: Annotated[bool, typer.Option("--force", help="Accepted for old scripts; changes nothing: a lock that "
                                                        "a process holds is never removed.")] = False,
) -> None:
    """Clear a stale lock record (left by a holder that ended without releasing), if LOCK_ID names it.

    A lock that a process holds is never removed (exit 3, naming that process): stop the process
    instead; its lock is freed the instant it exits."""

    def body(o: Opts) -> None:
        holder = o.store().force_unlock(lock_id, force=force)
        if o.json:
            emit_json({"unlocked": True, "holder": holder})
        else:
            if holder.get("backend_pid") is not None:  # PostgreSQL: the holder's session was ended
                out(f"unlocked: ended the PostgreSQL session of PID {holder['pid']} on {holder['hostname']} "
                    f"(lock ID {lock_id}); its uncommitted change was rolled back")
            else:
                out(f"unlocked: cleared the stale record of PID {holder['pid']} on {holder['hostname']} "
                    f"(lock ID {lock_id}); no process held the lock")

    run(body)
