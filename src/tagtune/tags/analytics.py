"""Tag analytics over the caption tags: frequencies, Jaccard neighbours, recommended prompt tags.

Every query runs on one sparse post x tag matrix X (scipy CSC, one column per caption tag)
built once from the `captions` table and cached in the workspace (`tags_index`). A subset is a
0/1 vector s over the posts; the posts of every tag that fall in s are one sparse product,
X.T @ s, so intersections are exact column dot products and |A u B| = |A| + |B| - |A n B|.
Subsets come from SQL over `posts` (`catalog.subset_where`), so excluded posts never count
and favorites or exclusions changed after captioning are honoured without a rebuild.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import duckdb
import numpy as np

from tagtune.core.catalog import open_catalog
from tagtune.core.errors import InputError
from tagtune.core.results import Result
from tagtune.core.workspace import Workspace
from tagtune.recipe.workspace import workspace_recipe
from tagtune.tags.index import (
    TagIndex,
    column_counts,
    subset_expr,
    subset_fields,
    subset_mask,
    tag_index,
)
from tagtune.tags.suggest_prompt import min_count_hint, prompt_tags

GROUPS = ("artist", "copyright", "character", "general", "meta", "quality", "rating", "period")
TOKEN_GROUPS = ("quality", "rating", "period", "meta")
"""Groups that are caption tokens, not content: `suggest` never recommends them."""


# --- ranking ---------------------------------------------------------------------------


def jaccard(inter: np.ndarray, count_a: np.ndarray, count_b: int | np.ndarray) -> np.ndarray:
    """|A n B| / (|A| + |B| - |A n B|), 0 where both sets are empty."""
    union = count_a + count_b - inter
    return np.divide(inter, union, out=np.zeros(len(inter)), where=union > 0)


def _ranked(jac: np.ndarray, inter: np.ndarray, keep: np.ndarray, n: int) -> np.ndarray:
    """Columns in `keep`, best first: Jaccard, then intersection, then tag name; at most n."""
    cols = np.flatnonzero(keep)
    order = np.lexsort((cols, -inter[cols], -jac[cols]))
    return cols[order[: max(n, 0)]]


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TagStat:
    """One tag of a result: its posts, those shared with the reference set, and the Jaccard."""

    tag: str
    group: str
    count: int
    intersection: int = 0
    jaccard: float = 0.0


@dataclass(frozen=True)
class TopResult(Result):
    subset: str
    posts: int
    group: str | None
    tags: list[TagStat]

    def to_json(self) -> dict:
        """JSON form: each tag with its posts and its share of the subset's posts."""
        rows = [
            {"tag": t.tag, "group": t.group, "count": t.count, "share": t.count / self.posts}
            for t in self.tags
        ]
        return {"subset": self.subset, "posts": self.posts, "group": self.group, "tags": rows}


@dataclass(frozen=True)
class SimilarResult(Result):
    tag: str
    group: str
    count: int
    subset: str
    posts: int
    tags: list[TagStat]


@dataclass(frozen=True)
class SuggestResult(Result):
    subset: str
    against: str
    subset_posts: int
    posts: int
    min_count: int
    tags: list[TagStat]
    prompt: str
    """The recommended tags as one ready prompt line (parentheses escaped A1111-style)."""
    note: str = ""
    """Said when the ranking cannot single anything out (the subset is the reference set)."""


def _stats(index: TagIndex, cols: np.ndarray, count, inter=None, jac=None) -> list[TagStat]:
    return [
        TagStat(
            tag=str(index.tags[c]),
            group=str(index.groups[c]),
            count=int(count[c]),
            intersection=int(inter[c]) if inter is not None else int(count[c]),
            jaccard=float(jac[c]) if jac is not None else 0.0,
        )
        for c in cols
    ]


def prompt_line(tags: list[str]) -> str:
    """Tags as a ready prompt: comma-separated, ( and ) escaped so A1111 reads them literally."""
    return ", ".join(t.replace("(", r"\(").replace(")", r"\)") for t in tags)


# --- queries on an index ---------------------------------------------------------------


def top_in(index: TagIndex, mask: np.ndarray, group: str | None, n: int) -> list[TagStat]:
    """Most frequent tags inside `mask`, optionally of one group."""
    count = column_counts(index, mask)
    keep = count > 0
    if group:
        keep &= index.groups == group
    return _stats(index, _ranked(count.astype(float), count, keep, n), count)


def similar_in(index: TagIndex, col: int, universe: np.ndarray, n: int) -> list[TagStat]:
    """Tags ranked by the Jaccard index of their post sets with tag `col`'s, inside `universe`."""
    start, end = index.X.indptr[col], index.X.indptr[col + 1]
    a = np.zeros(index.n_posts, dtype=np.int32)
    a[index.X.indices[start:end]] = 1
    a &= universe
    count = column_counts(index, universe)
    inter = column_counts(index, a)
    jac = jaccard(inter, count, int(a.sum()))
    keep = inter > 0
    keep[col] = False
    return _stats(index, _ranked(jac, inter, keep, n), count, inter, jac)


def suggest_in(
    index: TagIndex, target: np.ndarray, universe: np.ndarray, n: int, min_count: int
) -> list[TagStat]:
    """Content tags ranked by the Jaccard index of their post set with `target`, in `universe`.

    Quality, rating, period and meta tokens are left out; so are tags on fewer than
    `min_count` posts of the universe.
    """
    count = column_counts(index, universe)
    inter = column_counts(index, target)
    jac = jaccard(inter, count, int(target.sum()))
    keep = (inter > 0) & (count >= min_count) & ~np.isin(index.groups, TOKEN_GROUPS)
    return _stats(index, _ranked(jac, inter, keep, n), count, inter, jac)


# --- workspace-level verbs -------------------------------------------------------------


def resolve_tag(index: TagIndex, tag: str) -> int:
    """Column of a tag given in caption (`long hair`) or Danbooru (`long_hair`) form.

    An unknown tag is an InputError listing the closest tags.
    """
    raw = tag.strip()
    for form in (raw, raw.replace("_", " "), raw.lower(), raw.lower().replace("_", " ")):
        col = index.column(form)
        if col is not None:
            return col
    vocab = [str(t) for t in index.tags]
    close = difflib.get_close_matches(raw.lower().replace("_", " "), vocab, n=5, cutoff=0.6)
    reason = "no caption has this tag"
    reason += f"; close matches: {', '.join(close)}" if close else "; no close match"
    raise InputError(reason, field="tag", value=tag, hint="`tagtune tags WS top` lists the tags")


def top_tags(
    ws: Workspace,
    subset: str = "all",
    where: str | None = None,
    group: str | None = None,
    n: int = 50,
) -> TopResult:
    """Tag frequencies in a subset (all, favorites or SQL over posts), optionally of one group."""

    if group is not None and group not in GROUPS:
        raise InputError("unknown tag group", field="group", value=group, allowed=", ".join(GROUPS))
    expr = subset_expr(subset, where)
    with open_catalog(ws.catalog_path, read_only=True) as con:
        index = tag_index(ws, con)
        mask = subset_mask(con, index, expr, subset_fields(subset, where))
    return TopResult(expr, int(mask.sum()), group, top_in(index, mask, group, n))


def similar_tags(
    ws: Workspace, tag: str, n: int = 20, subset: str = "all", where: str | None = None
) -> SimilarResult:
    """Tags whose post sets overlap most with `tag`'s (Jaccard), within a subset."""

    expr = subset_expr(subset, where)
    with open_catalog(ws.catalog_path, read_only=True) as con:
        index = tag_index(ws, con)
        col = resolve_tag(index, tag)
        universe = subset_mask(con, index, expr, subset_fields(subset, where))
    rows = similar_in(index, col, universe, n)
    count = int(universe[index.X.indices[index.X.indptr[col] : index.X.indptr[col + 1]]].sum())
    return SimilarResult(
        str(index.tags[col]), str(index.groups[col]), count, expr, int(universe.sum()), rows
    )


def suggest_tags(
    ws: Workspace,
    subset: str | None = None,
    against: str = "all",
    where: str | None = None,
    n: int = 20,
    min_count: int = 20,
    store: bool = True,
) -> SuggestResult:
    """Recommended prompt tags: content tags ranked by Jaccard with the subset's post set.

    Tag post sets are taken over the reference set `against` joined with the subset, so the
    default (favorites against all) ranks the tags that best pick out the favorites among
    all training posts. Without `subset`, the subset is `where` when given, else favorites.
    The ranking replaces that subset's rows in `recommended_tags`.
    """

    expr = subset_expr(subset or ("all" if where else "favorites"), where)
    with open_catalog(ws.catalog_path, read_only=not store) as con:
        index = tag_index(ws, con)
        target = subset_mask(con, index, expr, subset_fields(subset, where))
        universe = subset_mask(con, index, against, "against") | target
        if not target.any():
            raise InputError(
                "no captioned post is in this subset",
                field="subset",
                value=expr,
                hint="favorites come from the favorites list given to `tagtune ingest`",
            )
        rows = suggest_in(index, target, universe, n, min_count)
        candidates = column_counts(index, universe)[
            (column_counts(index, target) > 0) & ~np.isin(index.groups, TOKEN_GROUPS)
        ]
        if store:
            store_recommended(con, expr, rows)
    same = int(target.sum()) == int(universe.sum())
    captions = workspace_recipe(ws).caption
    in_prompt = prompt_tags(rows, captions.count_tags, captions.order)
    notes = [min_count_hint(candidates, n, min_count)]
    return SuggestResult(
        expr,
        against,
        int(target.sum()),
        int(universe.sum()),
        min_count,
        rows,
        prompt_line([r.tag for r in in_prompt]),
        note="; ".join(
            x
            for x in [
                *notes,
                f"the subset holds every post of the reference set ({against!r}): the ranking "
                "is plain tag frequency; compare with a larger set (`against`) or a narrower "
                "subset"
                if same
                else "",
            ]
            if x
        ),
    )


def store_recommended(con: duckdb.DuckDBPyConnection, subset: str, rows: list[TagStat]) -> None:
    """Replace the `recommended_tags` rows of `subset` with this ranking (one transaction)."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM recommended_tags WHERE subset = ?", [subset])
        if rows:
            con.executemany(
                "INSERT INTO recommended_tags (subset, rank, tag, jaccard, count) "
                "VALUES (?, ?, ?, ?, ?)",
                [[subset, i + 1, r.tag, r.jaccard, r.count] for i, r in enumerate(rows)],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def recommended_tags(con: duckdb.DuckDBPyConnection, subset: str = "favorites") -> list[dict]:
    """The stored ranking of a subset (for the model card), best first."""
    cur = con.execute(
        "SELECT rank, tag, jaccard, count FROM recommended_tags WHERE subset = ? ORDER BY rank",
        [subset],
    )
    return [dict(zip(("rank", "tag", "jaccard", "count"), r, strict=True)) for r in cur.fetchall()]
