"""Experience store: one table per agent group; rows versioned by policy version, payloads by reference.

A row is created pending with its declared fields; each field gets a ready flag when its value (a Ray
ObjectRef in Ray mode, the value itself in serial mode) is known to be complete. A row becomes visible
only when every field is ready, so consumers never see a half row. A row of a worker that died is
aborted (never visible) and produced again under the same `sample_id`; committing an id twice is refused.
A visible row whose payload was lost with its node before a consumer read it is withdrawn, and likewise
produced again under its id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class StoreError(RuntimeError):
    """A store rule was broken: duplicate sample id, unknown row, unknown field."""


@dataclass
class Row:
    sample_id: str
    """Globally unique: `it{iteration}-req{request}-{group}`; the same id when a lost row is produced again."""
    group: str
    policy_version: int
    fields: dict[str, Any] = field(default_factory=dict)
    """Payloads by reference (ObjectRef) or small values."""
    ready: dict[str, bool] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    """Small metadata by value (active sample count, env steps; the producing request, its slot and worker)."""
    consumed: bool = False

    @property
    def complete(self) -> bool:
        return all(self.ready.values())


class Table:
    def __init__(self, group: str, field_names: tuple[str, ...]):
        self.group, self.field_names = group, field_names
        self.pending: dict[str, Row] = {}
        self.visible: dict[str, Row] = {}
        self.aborted = 0
        self.refused_stale = 0
        self.lost = 0

    def __len__(self) -> int:
        return len(self.visible)


class ExperienceStore:
    def __init__(self, groups: list[str], field_names: tuple[str, ...] = ("payload",)):
        self.tables = {g: Table(g, field_names) for g in groups}

    def _table(self, group: str) -> Table:
        if group not in self.tables:
            raise StoreError(f"no table for group {group!r}; tables: {sorted(self.tables)}")
        return self.tables[group]

    # -- producers ------------------------------------------------------------------------------
    def begin(self, group: str, sample_id: str, policy_version: int, meta: dict | None = None) -> Row:
        """Open a pending row; refused if a visible row already has this id (no duplicates)."""
        table = self._table(group)
        if sample_id in table.visible:
            raise StoreError(f"duplicate sample_id {sample_id!r} in table {group!r}: a complete row already exists")
        if sample_id in table.pending:
            raise StoreError(f"sample_id {sample_id!r} is already pending in table {group!r}; abort it first")
        row = Row(sample_id, group, policy_version, ready={f: False for f in table.field_names}, meta=dict(meta or {}))
        table.pending[sample_id] = row
        return row

    def write(self, group: str, sample_id: str, field_name: str, value: Any, ready: bool = True) -> None:
        table = self._table(group)
        row = table.pending.get(sample_id)
        if row is None:
            raise StoreError(f"no pending row {sample_id!r} in table {group!r}")
        if field_name not in row.ready:
            raise StoreError(f"row {sample_id!r}: unknown field {field_name!r}; fields: {list(row.ready)}")
        row.fields[field_name] = value
        row.ready[field_name] = ready

    def mark_ready(self, group: str, sample_id: str, field_name: str, meta: dict | None = None,
                   policy_version: int | None = None) -> bool:
        """Flag one field ready; publishes the row when it is complete. Returns whether it was published.

        `policy_version` records the version that produced the row when it was not known at `begin`.
        """
        table = self._table(group)
        row = table.pending.get(sample_id)
        if row is None:
            raise StoreError(f"no pending row {sample_id!r} in table {group!r}")
        if policy_version is not None:
            row.policy_version = policy_version
        if field_name not in row.fields:
            raise StoreError(f"row {sample_id!r}: field {field_name!r} has no value yet")
        row.ready[field_name] = True
        row.meta.update(meta or {})
        if row.complete:
            del table.pending[sample_id]
            table.visible[sample_id] = row
            return True
        return False

    def abort(self, group: str, sample_id: str) -> None:
        """Drop a pending row (its producer died); it is never visible."""
        table = self._table(group)
        if table.pending.pop(sample_id, None) is not None:
            table.aborted += 1

    def withdraw(self, group: str, sample_id: str) -> Row:
        """Take back a visible row whose payload was lost (its node died before a consumer read it), so that it
        can be produced again under the same id; returns it (its meta names the request that produced it)."""
        table = self._table(group)
        if sample_id not in table.visible:
            raise StoreError(f"cannot withdraw {sample_id!r}: not a visible row of table {group!r}")
        table.lost += 1
        return table.visible.pop(sample_id)

    def admit(self, group: str, sample_id: str, policy_version: int, current_version: int, max_staleness: int) -> bool:
        """Bounded staleness: drop (and count) a pending row more than `max_staleness` versions old."""
        if current_version - policy_version <= max_staleness:
            return True
        table = self._table(group)
        if table.pending.pop(sample_id, None) is not None:
            table.refused_stale += 1
        return False

    # -- consumers ------------------------------------------------------------------------------
    def ready_rows(self, group: str, policy_version: int | None = None, include_consumed: bool = False) -> list[Row]:
        """Visible rows, in sample_id order, optionally of one policy version."""
        rows = [
            r for r in self._table(group).visible.values()
            if (policy_version is None or r.policy_version == policy_version) and (include_consumed or not r.consumed)
        ]
        return sorted(rows, key=lambda r: r.sample_id)

    def consume(self, group: str, sample_ids: list[str]) -> None:
        table = self._table(group)
        for sid in sample_ids:
            if sid not in table.visible:
                raise StoreError(f"cannot consume {sid!r}: not a visible row of table {group!r}")
            table.visible[sid].consumed = True

    def evict(self, older_than_version: int) -> int:
        """Drop consumed rows older than a version (their payload references are released)."""
        dropped = 0
        for table in self.tables.values():
            for sid in [s for s, r in table.visible.items() if r.consumed and r.policy_version < older_than_version]:
                del table.visible[sid]
                dropped += 1
        return dropped

    def stats(self) -> dict:
        return {
            f"store/{g}/{k}": v
            for g, t in self.tables.items()
            for k, v in (("visible", len(t.visible)), ("pending", len(t.pending)), ("aborted", t.aborted),
                         ("refused_stale", t.refused_stale), ("lost", t.lost))
        }
