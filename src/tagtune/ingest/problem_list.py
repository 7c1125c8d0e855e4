"""`tagtune status WS --problems`: the problem rows of the catalog (file, post, reason, detail),
filtered by reason and capped, so a user sees what was skipped and where to look.

Ingest and prepare record their problems in the catalog's `problems` table; this module only
reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tagtune.core.catalog import open_catalog
from tagtune.core.errors import InputError
from tagtune.core.workspace import Workspace
from tagtune.ingest.images import REASONS

PREPARE_REASONS = ("size-mismatch", "unreadable")
"""Reasons `tagtune prepare` records for an image it could not encode."""

KNOWN_REASONS: tuple[str, ...] = tuple(dict.fromkeys((*REASONS, *PREPARE_REASONS)))
"""Every reason a problem row can have (ingest's, then prepare's)."""

DEFAULT_LIMIT = 50
"""Rows listed unless asked otherwise; the rest are counted (`limit=0` lists them all)."""


@dataclass
class ProblemRow:
    """One problem: the file to open, the post if known, the reason word, what happened and
    which stage (ingest or prepare) found it."""

    file: str | None
    post: int | None
    reason: str
    detail: str | None
    stage: str | None


@dataclass
class ProblemListing:
    """The rows shown and how many matched in all (`total - len(rows)` were left out)."""

    rows: list[ProblemRow] = field(default_factory=list)
    total: int = 0
    reason: str | None = None

    @property
    def left_out(self) -> int:
        """Matching rows not listed (over the limit)."""
        return self.total - len(self.rows)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: the rows, the total and how many were left out."""
        return {
            "reason": self.reason,
            "total": self.total,
            "left_out": self.left_out,
            "problems": [asdict(r) for r in self.rows],
        }


def check_reason(reason: str | None) -> None:
    """InputError (listing the known reasons) for a reason no stage records."""
    if reason is not None and reason not in KNOWN_REASONS:
        raise InputError(
            "not a problem reason", field="reason", value=reason, allowed=", ".join(KNOWN_REASONS)
        )


def list_problems(
    ws: Workspace, reason: str | None = None, limit: int | None = None
) -> ProblemListing:
    """The catalog's problem rows (of `reason` when given), ordered by stage, reason, file and
    post; at most `limit` rows (default DEFAULT_LIMIT, 0 = all), with the total counted."""
    check_reason(reason)
    limit = DEFAULT_LIMIT if limit is None else limit
    if limit < 0:
        raise InputError("must be 0 (all) or more", field="limit", value=limit)
    where, params = ("WHERE reason = ?", [reason]) if reason else ("", [])
    with open_catalog(ws.catalog_path, read_only=True) as con:
        total = int(con.execute(f"SELECT count(*) FROM problems {where}", params).fetchone()[0])
        rows = con.execute(
            f"SELECT path, post_id, reason, detail, stage FROM problems {where} "
            "ORDER BY stage, reason, path NULLS LAST, post_id NULLS LAST, detail"
            + (" LIMIT ?" if limit else ""),
            [*params, limit] if limit else params,
        ).fetchall()
    return ProblemListing([ProblemRow(*r) for r in rows], total, reason)
