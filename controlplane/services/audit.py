"""Reading the audit log (writing happens inside each use case's own transaction): search, and
export as CSV for auditors (itself audited)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.services.context import Context

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run these as formulas


def recent(ctx: Context, *, limit: int = 100, action: str | None = None, actor: str | None = None,
           target: str | None = None, since: datetime | None = None,
           until: datetime | None = None) -> list[dict[str, Any]]:
    """Newest first; ACTION may end in '.' to match a family (`session.`). A time without a zone is UTC."""
    since, until = (t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t for t in (since, until))
    with session_scope(ctx.engine) as session:
        return [{"id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
                 "detail": e.detail}
                for e in audit.list_recent(session=session, limit=limit, action=action, actor=actor, target=target,
                                           since=since, until=until)]


def export_csv(ctx: Context, *, by: str, limit: int, **filters: Any) -> str:
    """The matching events as CSV (id, at, actor, action, target, detail as JSON). The export is
    audited (BY: the admin) with its filters, and cells a spreadsheet would read as formulas are quoted."""
    events = recent(ctx, limit=limit, **filters)
    with session_scope(ctx.engine) as session:
        audit.append(session=session, actor=by, action="audit.export", target="audit",
                     rows=len(events), filters={k: str(v) for k, v in filters.items() if v is not None})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "at", "actor", "action", "target", "detail"])
    for e in events:
        writer.writerow([_cell(str(v)) for v in (e["id"], e["at"].isoformat(), e["actor"], e["action"], e["target"],
                                                 json.dumps(e["detail"], sort_keys=True, default=str))])
    return out.getvalue()


def _cell(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_START) else text
