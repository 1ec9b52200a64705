"""`agentstate migrate`: create or upgrade a PostgreSQL store's SQL schema now (for deployments where
applications may not run DDL). A directory's agentstate.db needs no such step (it is created and
upgraded on first use), so a directory is refused (exit 2) rather than an agentstate.db created."""

from __future__ import annotations

import typer

from .common import EXIT_CODES, Opts, UsageError, WriteCommand, emit_json, out, run

app = typer.Typer()


@app.command(cls=WriteCommand, epilog=EXIT_CODES)
def migrate() -> None:
    """Create or upgrade the schema of the PostgreSQL store at --url (or AGENTSTATE_URL); exit 5 if it is newer
    than this agentstate. Not for a directory (exit 2): its agentstate.db is created and upgraded on first use."""

    def body(o: Opts) -> None:
        from ..sql.pg import run_migrations

        o.refuse_tenant()
        if o.url is None:
            where = "--dir" if o.dir is not None else "a directory store"
            raise UsageError(f"migrate is for PostgreSQL (--url or AGENTSTATE_URL), not {where}: a directory's "
                             "agentstate.db is created and upgraded on first use; nothing was created")
        report = run_migrations(o.url)
        where = f"schema {report['schema']} on {report['server']}"
        if o.json:
            emit_json(report)
        elif report.get("applied"):
            out(f"migrated {where} to version {report['schema_version']} "
                f"(applied {', '.join(map(str, report['applied']))})")
        else:
            out(f"{where} is at version {report['schema_version']}: nothing to do")

    run(body)
