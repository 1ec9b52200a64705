"""`agentstate doctor`: render the library's diagnosis (agentstate.doctor) and repair report."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import EXIT_CODES, Opts, WriteCommand, emit_json, out, run

app = typer.Typer()


@app.command(cls=WriteCommand, epilog=EXIT_CODES)
def doctor(
    repair: Annotated[bool, typer.Option("--repair", help="Persist a recovery: restore state.json from the backup, "
                                                          "keep the bad file aside, remove stray temp files; "
                                                          "then report what was done.")] = False,
) -> None:
    """Check the store and say what is wrong and how to fix it; exit 0 if all is well, 1 if any check is bad
    (4 if no valid state document is left). Takes no lock and changes nothing unless --repair.

    It checks: the state document (state.json parses and is valid; its serial and lineage), its backup
    state.json.bak, the state lock (held, by whom, stale), stray temp files; and the sessions/responses
    database (agentstate.db or the PostgreSQL schema): that it opens, its permissions (0600), schema
    version, SQLite integrity_check, the kept session counts, every tenant's response chains (links,
    depths, roots), the database's lock; and, with --cache URL, the Redis hot tier's health."""

    def body(o: Opts) -> int:
        from .. import doctor as diagnosis

        store = o.store(writing=repair)
        report = diagnosis.repair(store) if repair else diagnosis.diagnose(store)
        if o.cache is not None:
            from ..cache import health

            report.findings.append(health(o.cache))
        if o.json:
            emit_json(report.to_dict())
        else:
            for f in report.findings:
                out(f"{'ok ' if f['ok'] else 'BAD'}  {f['check']}: {f['detail']}")
            for line in report.summary():
                out(line)
        return report.exit_code

    run(body)
