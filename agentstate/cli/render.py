"""Rich rendering for people at a terminal. Imported only when stdout is a TTY."""

from __future__ import annotations

from typing import Any

import orjson
from rich.console import Console
from rich.table import Table


def state_table(state: Any) -> None:
    console = Console()
    console.print(
        f"[bold]serial[/] {state.serial}  [bold]lineage[/] {state.lineage}  "
        f"[bold]updated[/] {state.updated_at or '-'}"
        + ("  [yellow](served from the backup)[/]" if state.source == "backup" else "")
    )
    table = Table("address", "value", show_lines=False)
    for address in sorted(state.resources):
        value = orjson.dumps(state.resources[address], option=orjson.OPT_SORT_KEYS).decode()
        table.add_row(address, value if len(value) < 200 else value[:197] + "...")
    if state.resources:
        console.print(table)
    else:
        console.print("[dim]no resources[/]")
