"""`tagtune tags chart`: one PNG with the top content tags and the quality/rating/period split.

Rendering is a pure function of the counts (matplotlib's Agg canvas, no pyplot state, no
display needed); the file is written atomically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tagtune.core.atomic import atomic_path
from tagtune.core.catalog import open_catalog
from tagtune.core.outputs import claim_output
from tagtune.core.workspace import Workspace
from tagtune.recipe.workspace import workspace_recipe

GROUP_COLORS = {
    "artist": "#d62728",
    "copyright": "#9467bd",
    "character": "#2ca02c",
    "general": "#1f77b4",
    "meta": "#7f7f7f",
}
TOKEN_PANELS = ("quality", "rating", "period")


@dataclass(frozen=True)
class ChartResult:
    out: str
    subset: str
    posts: int
    top: list[tuple[str, str, int]]
    """(tag, group, posts) of the top bars."""
    distributions: dict[str, list[tuple[str, int]]]
    """Per token group, (token, posts) in the recipe's order."""
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def render_chart(
    path: str | Path,
    top: list[tuple[str, str, int]],
    distributions: dict[str, list[tuple[str, int]]],
    title: str,
) -> int:
    """Draw the chart into `path` (PNG, atomic); returns the file size in bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import StrMethodFormatter

    height = max(6.0, 0.26 * len(top) + 1.5)
    fig = Figure(figsize=(13, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(TOKEN_PANELS), 2, width_ratios=[3, 2])
    ax = fig.add_subplot(grid[:, 0])
    labels = [t for t, _, _ in top][::-1]
    values = [c for _, _, c in top][::-1]
    colors = [GROUP_COLORS.get(g, "#17becf") for _, g, _ in top][::-1]
    ax.barh(np.arange(len(top)), values, color=colors)
    ax.set_yticks(np.arange(len(top)), labels, fontsize=8)
    ax.set_xlabel("posts")
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_title(f"top {len(top)} tags")
    for group, color in GROUP_COLORS.items():
        if any(g == group for _, g, _ in top):
            ax.bar(0, 0, color=color, label=group)
    if top:
        ax.legend(loc="lower right", fontsize=8)
    for i, group in enumerate(TOKEN_PANELS):
        sub = fig.add_subplot(grid[i, 1])
        items = distributions.get(group, [])
        sub.bar(range(len(items)), [c for _, c in items], color="#ff7f0e")
        sub.set_xticks(
            range(len(items)), [t for t, _ in items], rotation=30, ha="right", fontsize=8
        )
        sub.set_title(group, fontsize=10)
        sub.set_ylabel("posts", fontsize=8)
        sub.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path).stat().st_size


def _token_order(ws: Workspace) -> dict[str, list[str]]:
    """The recipe's own order of the quality, rating and period tokens."""
    cap = workspace_recipe(ws).caption
    ratings: list[str] = []
    for toks in cap.ratings.values():
        ratings += [t for t in toks if t not in ratings]
    return {
        "quality": [b.tag for b in cap.quality_bands],
        "rating": ratings,
        "period": [p.tag for p in cap.periods],
    }


def write_tags_chart(
    ws: Workspace,
    out: str | Path,
    subset: str = "all",
    where: str | None = None,
    n: int = 30,
    force: bool = False,
) -> ChartResult:
    """Chart the top `n` content tags of a subset and its quality/rating/period distribution.

    An existing `out` is replaced only with `force` (never the workspace's own records).
    """
    from tagtune.tags import analytics as tg

    claim_output(out, force=force, inputs=ws.inputs())

    expr = tg.subset_expr(subset, where)
    with open_catalog(ws.catalog_path, read_only=True) as con:
        index = tg.tag_index(ws, con)
        mask = tg.subset_mask(con, index, expr, tg.subset_flags(subset, where))
    count = tg.column_counts(index, mask)
    content = (count > 0) & ~np.isin(index.groups, tg.TOKEN_GROUPS)
    cols = np.flatnonzero(content)
    cols = cols[np.lexsort((cols, -count[cols]))][:n]
    top = [(str(index.tags[c]), str(index.groups[c]), int(count[c])) for c in cols]
    order = _token_order(ws)
    dists: dict[str, list[tuple[str, int]]] = {}
    for group in TOKEN_PANELS:
        present = [int(c) for c in np.flatnonzero((index.groups == group) & (count > 0))]
        rank = {t: i for i, t in enumerate(order[group])}
        present.sort(key=lambda c: (rank.get(str(index.tags[c]), len(rank)), -count[c]))
        dists[group] = [(str(index.tags[c]), int(count[c])) for c in present]
    posts = int(mask.sum())
    size = render_chart(out, top, dists, f"tagtune tags: {expr} ({posts:,} posts)")
    return ChartResult(str(out), expr, posts, top, dists, size)
