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
    from ..lock import Holder

    import orjson

    h = Holder.parse(orjson.dumps(record))
    return h.describe() if h else "an unknown holder"


@lock_app.command("status", cls=Command, epilog=EXIT_CODES)
def lock_status() -> None:
    """Show whether the lock is free or held, by whom, and what to do next."""

    def body(o: Opts) -> None:
        st = o.store().lock_status()
        if o.json:
            emit_json(st)
            return
        if not st["held"]:
            out(f"free ({st['path']})")
            if st.get("last_holder"):
                out(f"last holder, which did not release: {_describe(st['last_holder'])}")
        else:
            out(f"held by {_describe(st.get('holder'))}")
            alive = st.get("holder_alive")
            if "holder_alive" in st:
                state = {True: "alive", False: "not running", None: "cannot tell (another host or namespace)"}[alive]
                out(f"holder process: {state}" + ("; the lock looks stale" if st.get("stale") else ""))
        for key in ("advice", "next", "hint"):
            if st.get(key):
                out(str(st[key]))
                break
        else:
            if st["held"] and st.get("holder"):
                out(f"to remove it: agentstate force-unlock {st['holder'].get('lock_id')}")

    run(body)


@app.command("force-unlock", cls=Command, epilog=EXIT_CODES)
def force_unlock(
    lock_id: Annotated[str, typer.Argument(help="The lock ID from the lock error or `agentstate lock status`.")],
    force: Annotated[bool, typer.Option("--force", help="Unlock even if the holder is alive on this host.")] = False,
) -> None:
    """Clear the lock record, only if LOCK_ID names its holder and no process holds the lock."""

    def body(o: Opts) -> None:
        holder = o.store().force_unlock(lock_id, force=force)
        if o.json:
            emit_json({"unlocked": True, "holder": holder})
        else:
            out(f"unlocked: removed the lock of PID {holder['pid']} on {holder['hostname']} (lock ID {lock_id})")

    run(body)
