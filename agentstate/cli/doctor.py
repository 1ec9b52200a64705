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
    """Check the state, backup, lock and stray temp files (and the --cache hot tier when given); exit 1 if any
    is bad (4 if no valid state)."""

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
