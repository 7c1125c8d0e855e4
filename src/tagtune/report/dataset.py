"""The report's Dataset section: every figure is one DuckDB query over the catalog.

Posts, images, favorites, exclusions and problems by reason; posts per rating, year and
source; the top tags of each Danbooru category; the problems table (capped, with the total);
a fixed sample of captions with their CLIP token counts and how many exceed 75 and 225.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from tagtune.ingest.report import workspace_status
from tagtune.report import charts
from tagtune.report.assets import Assets

CATEGORIES = ("artist", "copyright", "character", "general", "meta")
TOP_PER_CATEGORY = 15
PROBLEM_ROWS = 500
CAPTION_SAMPLE = 10
TOKEN_LIMITS = (75, 225)

_TOP_TAGS_SQL = """
SELECT category, tag, n FROM (
    SELECT category, tag, count(*) AS n,
           row_number() OVER (PARTITION BY category ORDER BY count(*) DESC, tag) AS r
    FROM ({unions}) GROUP BY category, tag
) WHERE r <= ? ORDER BY category, r
"""


@dataclass
class DatasetSection:
    """What the Dataset section shows."""

    totals: list[tuple[str, int]] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    problem_counts: dict[str, int] = field(default_factory=dict)
    sources: list[tuple[str, int, int]] = field(default_factory=list)
    charts: list[tuple[str, str]] = field(default_factory=list)
    """(URL, alt text) of the rating, year and top-tag charts."""
    problems: list[tuple[str, Any, str, str, str]] = field(default_factory=list)
    problems_total: int = 0
    captions: list[tuple[int, str, int | None]] = field(default_factory=list)
    token_bands: list[tuple[str, int]] = field(default_factory=list)


def top_tags(con: duckdb.DuckDBPyConnection, n: int = TOP_PER_CATEGORY) -> dict[str, list]:
    """The `n` most frequent tags of each category over posts that may enter training."""
    unions = " UNION ALL ".join(
        f"SELECT '{c}' AS category, unnest(tags_{c}) AS tag FROM posts WHERE excluded IS NULL"
        for c in CATEGORIES
    )
    out: dict[str, list[tuple[str, int]]] = {c: [] for c in CATEGORIES}
    for category, tag, count in con.execute(_TOP_TAGS_SQL.format(unions=unions), [n]).fetchall():
        out[category].append((str(tag), int(count)))
    return out


def _sources(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int, int]]:
    """(source, posts, images) per ingest source."""
    rows = con.execute(
        "SELECT coalesce(posts.source, '?'), count(*), count(files.post_id) FROM posts "
        "LEFT JOIN files ON files.post_id = posts.id GROUP BY ALL ORDER BY 2 DESC, 1"
    ).fetchall()
    return [(str(s), int(p), int(i)) for s, p, i in rows]


def _problems(con: duckdb.DuckDBPyConnection, limit: int) -> tuple[list, int]:
    total = int(con.execute("SELECT count(*) FROM problems").fetchone()[0])
    rows = con.execute(
        "SELECT coalesce(path, ''), post_id, coalesce(stage, ''), reason, coalesce(detail, '') "
        "FROM problems ORDER BY stage, reason, path, post_id LIMIT ?",
        [limit],
    ).fetchall()
    return rows, total


def _captions(con: duckdb.DuckDBPyConnection) -> tuple[list, list[tuple[str, int]]]:
    """A fixed sample (the same posts on every rewrite) and the token-count bands."""
    sample = con.execute(
        "SELECT post_id, caption, tokens FROM captions ORDER BY hash(post_id), post_id LIMIT ?",
        [CAPTION_SAMPLE],
    ).fetchall()
    low, high = TOKEN_LIMITS
    row = con.execute(
        f"SELECT count(*) FILTER (tokens <= {low}), "
        f"count(*) FILTER (tokens > {low} AND tokens <= {high}), count(*) FILTER (tokens > {high}), "
        "count(*) FILTER (tokens IS NULL) FROM captions"
    ).fetchone()
    bands = [
        (f"<= {low} tokens (one CLIP chunk)", int(row[0])),
        (f"{low + 1} to {high} tokens (needs max_token_length {high})", int(row[1])),
        (f"> {high} tokens (cut off at {high})", int(row[2])),
        ("not counted", int(row[3])),
    ]
    return sample, [b for b in bands if b[1] or not b[0].startswith("not")]


def dataset_section(con: duckdb.DuckDBPyConnection, assets: Assets) -> DatasetSection:
    """Gather the Dataset section from an open (read-only) catalog and draw its charts."""
    status = workspace_status(con)
    section = DatasetSection(
        totals=[
            ("posts", status["posts"]),
            ("may enter training", status["included"]),
            ("images (checked files)", status["images"]),
            ("trainable (included, with an image)", status["trainable"]),
            ("favorites", status["favorites"]),
            ("captions", status["captions"]),
        ],
        excluded=status["excluded"],
        problem_counts=status["problems_by_stage"],
        sources=_sources(con),
    )
    if status["ratings"]:
        svg = charts.bar_chart(
            list(status["ratings"]), list(status["ratings"].values()), "posts per rating"
        )
        section.charts.append((assets.chart(svg), "posts per rating"))
    if status["years"]:
        svg = charts.bar_chart(
            list(status["years"]),
            list(status["years"].values()),
            "posts per year",
            color=charts.PALETTE[2],
        )
        section.charts.append((assets.chart(svg), "posts per year"))
    tops = top_tags(con)
    if any(tops.values()):
        svg = charts.top_tags_chart(tops, "top tags per category (posts that may enter training)")
        section.charts.append((assets.chart(svg), "top tags per category"))
    section.problems, section.problems_total = _problems(con, PROBLEM_ROWS)
    section.captions, section.token_bands = _captions(con)
    return section
