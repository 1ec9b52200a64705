"""`agentstate migrate`: create or upgrade the store's SQL schema now (PostgreSQL: for deployments where
applications may not run DDL; a directory: its agentstate.db). Otherwise it happens on first use."""

from __future__ import annotations

import typer

from .common import EXIT_CODES, Opts, WriteCommand, emit_json, out, run

app = typer.Typer()


@app.command(cls=WriteCommand, epilog=EXIT_CODES)
def migrate() -> None:
    """Create or upgrade the schema of the store at --url (or --dir); exit 5 if it is newer than this agentstate."""

    def body(o: Opts) -> None:
        from ..sql import is_url

        if o.url is not None and is_url(o.url):
            from ..sql.pg import run_migrations

            report = run_migrations(o.url)
            where = f"schema {report['schema']} on {report['server']}"
        elif o.url is not None:
            from ..errors import InvalidInput

            raise InvalidInput(f"--url {o.url!r} is not a postgresql:// URL",
                               hint="give postgresql://user@host/db (or postgres://...), or use --dir")
        else:
            from ..sql import open_database

            db = open_database(o.target, lock_timeout=o.lock_timeout())
            try:
                version = db.migrate()
            finally:
                db.close()
            report = {"dir": db.path, "schema_version": version}
            where = db.path
        if o.json:
            emit_json(report)
        elif report.get("applied"):
            out(f"migrated {where} to version {report['schema_version']} "
                f"(applied {', '.join(map(str, report['applied']))})")
        else:
            out(f"{where} is at version {report['schema_version']}: nothing to do")

    run(body)
