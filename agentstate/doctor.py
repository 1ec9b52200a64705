"""Doctor: what the findings of ``StateStore.check()`` mean, and what a repair did.

    report = agentstate.doctor.diagnose(store)   # no lock, writes nothing
    report = agentstate.doctor.repair(store)     # under the lock: restore, clean up, then check again
    report.exit_code, report.actions, report.to_dict()

Verdicts: every finding ok -> exit 0; a bad finding -> exit 1; the state bad with no valid backup
(no valid version left at all) -> exit 4.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

OK, BAD, UNRECOVERABLE = 0, 1, 4
REPAIRABLE = frozenset({"state", "backup", "temp files"})  # what --repair can fix
DATABASE = ("database", "session", "responses")  # prefixes of the agentstate.db checks


@dataclass
class Report:
    """Findings (one dict per check: "check", "ok", "detail", ...), and for a repair what it did."""

    findings: list[dict[str, Any]]
    repaired: bool = False  # a repair was asked for
    actions: list[str] = field(default_factory=list)  # what the repair changed, in words
    repaired_serial: int | None = None  # the serial state.json was restored as (None: not restored)

    @property
    def bad(self) -> list[dict[str, Any]]:
        return [f for f in self.findings if not f["ok"]]

    @property
    def ok(self) -> bool:
        return not self.bad

    @property
    def unrecoverable(self) -> bool:
        """The state file is bad and no valid backup is left: no valid version at all."""
        by_check = {f["check"]: f for f in self.findings}
        state = by_check.get("state")
        if state is None or state["ok"]:
            return False
        backup = by_check.get("backup", {})
        return not (backup.get("ok") and "serial" in backup)

    @property
    def exit_code(self) -> int:
        if self.ok:
            return OK
        return UNRECOVERABLE if self.unrecoverable else BAD

    def summary(self) -> list[str]:
        """Lines for people, after the findings: what was done, or what to do next."""
        lines = [f"repaired: {a}" for a in self.actions]
        if self.repaired and not self.actions:
            lines.append("nothing to repair" if self.ok else "nothing could be repaired")
        if self.ok:
            return lines
        if self.unrecoverable:
            lines.append("no valid version is left: restore state.json from a copy, or move the files aside "
                         "to start anew")
        elif not self.repaired and any(f["check"] in REPAIRABLE for f in self.bad):
            lines.append("run `agentstate doctor --repair` to restore from the backup and clean up")
        if any(f.get("disk_full") for f in self.bad):
            lines.append("the disk is full: free some disk space, then run `agentstate doctor` again")
        if any(f.get("read_only") for f in self.bad):
            lines.append("the store is on a read-only filesystem: open it once where it is writable, then run "
                         "`agentstate doctor` again")
        if any(f["check"].startswith(DATABASE) and f["check"] != "database lock" and not f.get("disk_full")
               and not f.get("read_only") for f in self.bad):  # a lock finding says its own remedy
            lines.append("the database findings are not repaired automatically: keep a copy of agentstate.db, "
                         "then export what still reads (`agentstate sessions export`) or restore it from a copy")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "repaired_serial": self.repaired_serial, "actions": list(self.actions),
                "findings": self.findings}


def diagnose(store: Any) -> Report:
    """Check the store without a lock; writes nothing."""
    return Report(store.check() + database_findings(store))


def database_findings(store: Any) -> list[dict[str, Any]]:
    """The checks of the store's agentstate.db (sessions, responses): integrity, schema version, lock, chains,
    stored values."""
    from .errors import AgentStateError
    from .responses.check import check_responses
    from .sql import check
    from .values_check import check_values

    try:  # check_responses: broken chain links, cycles; check_values: stored JSON that does not decode
        return check(store.path) + check_responses(store.path) + check_values(store.path)
    except AgentStateError as e:
        return [{"check": "database", "ok": False, "detail": str(e)}]


def _names(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def repair(store: Any, lock_timeout: float | str | None = None) -> Report:
    """Persist a recovery if the check finds something to repair, and report what changed.

    Under the store's lock: a damaged or missing state.json is rewritten from the backup (the bad file
    kept as ``state.json.corrupt-*``) and stray temp files are removed. Raises what the repair raises
    (StateCorrupted, exit 4, when no valid version is left; StateLocked, exit 3, on a lock timeout).
    """
    before = store.check()
    report = Report(before, repaired=True)
    by_check = {f["check"]: f for f in before}
    if by_check.get("store", {}).get("ok"):  # no store directory yet: nothing to repair, nothing to create
        return report
    names_before = _names(store.path)
    strays = set(by_check.get("temp files", {}).get("files") or ())
    state_bad = not by_check.get("state", {"ok": True})["ok"]
    backup_serial = by_check.get("backup", {}).get("serial")
    state = store.repair(lock_timeout)
    report.findings = store.check() + database_findings(store)
    names_after = _names(store.path)
    if state_bad:
        report.repaired_serial = state.serial
        kept = sorted(n for n in names_after - names_before if ".corrupt-" in n)
        where = f" (serial {backup_serial})" if backup_serial is not None else ""
        report.actions.append(
            f"restored {os.path.basename(store.state_path)} from the backup{where} as serial {state.serial}"
            + (f"; the damaged file is kept as {', '.join(kept)}" if kept else "")
        )
    removed = sorted(n for n in strays if n not in names_after)
    if removed:
        report.actions.append(f"removed {len(removed)} stray temp file{'s' if len(removed) != 1 else ''}: "
                              f"{', '.join(removed)}")
    return report
