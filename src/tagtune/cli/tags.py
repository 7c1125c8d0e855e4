"""`tagtune tags WS top|similar|suggest|chart`: tag frequencies, Jaccard neighbours, prompt tags."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from tagtune.cli.common import console, err_console, print_json
from tagtune.core.workspace import open_workspace

tags_app = typer.Typer(
    help="Tag analytics over the caption tags: top, similar, suggest, chart.",
    no_args_is_help=True,
)

SUBSET_HELP = "Posts to count: all, favorites, or a SQL WHERE clause over the posts table."
WHERE_HELP = "Extra SQL WHERE clause over posts (e.g. \"rating in ('g','s') and score >= 10\")."


@tags_app.callback()
def _tags(
    ctx: typer.Context, ws: Path = typer.Argument(..., metavar="WS", help="Workspace folder.")
) -> None:
    """Tag analytics over the caption tags: top, similar, suggest, chart."""
    ctx.obj = ws


def _busy():
    """A spinner on stderr while the index is read (or built once after each caption run)."""
    return err_console.status("reading the tag index (built once after each caption run)")


def _workspace(ctx: typer.Context):

    return open_workspace(ctx.obj)


def _table(title: str, rows, jaccard: bool, posts: int):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("tag")
    table.add_column("group")
    table.add_column("posts", justify="right")
    if jaccard:
        table.add_column("both", justify="right")
        table.add_column("jaccard", justify="right")
    else:
        table.add_column("share", justify="right")
    for i, r in enumerate(rows, 1):
        tail = (
            [f"{r.intersection:,}", f"{r.jaccard:.4f}"]
            if jaccard
            else [f"{r.count / posts:.1%}" if posts else "-"]
        )
        table.add_row(str(i), r.tag, r.group, f"{r.count:,}", *tail)
    return table


@tags_app.command()
def top(
    ctx: typer.Context,
    subset: str = typer.Option("all", "--subset", help=SUBSET_HELP),
    where: str = typer.Option(None, "--where", help=WHERE_HELP),
    group: str = typer.Option(None, "--group", help="Only this group: artist, general, ..."),
    n: int = typer.Option(50, "-n", min=1, help="How many tags."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Tag frequency table of a subset, optionally of one tag group."""
    from tagtune.tags.analytics import top_tags

    with _busy():
        res = top_tags(_workspace(ctx), subset=subset, where=where, group=group, n=n)
    if as_json:
        return print_json(res.to_dict())
    title = f"top tags of {res.subset}" + (f" ({res.group})" if res.group else "")
    console.print(_table(f"{title}: {res.posts:,} posts", res.tags, False, res.posts))


@tags_app.command()
def similar(
    ctx: typer.Context,
    tag: str = typer.Argument(..., help="Tag, as in captions (long hair) or Danbooru (long_hair)."),
    n: int = typer.Option(20, "-n", min=1, help="How many tags."),
    subset: str = typer.Option("all", "--subset", help=SUBSET_HELP),
    where: str = typer.Option(None, "--where", help=WHERE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Tags ranked by the Jaccard index of their post sets with TAG's."""
    from tagtune.tags.analytics import similar_tags

    with _busy():
        res = similar_tags(_workspace(ctx), tag, n=n, subset=subset, where=where)
    if as_json:
        return print_json(res.to_dict())
    title = f"tags like {res.tag!r} ({res.group}, {res.count:,} of {res.posts:,} posts)"
    console.print(_table(title, res.tags, True, res.posts))


@tags_app.command()
def suggest(
    ctx: typer.Context,
    subset: str = typer.Option(
        None, "--subset", help=SUBSET_HELP + " Default: favorites, or --where alone."
    ),
    against: str = typer.Option("all", "--against", help="Reference set: all, favorites or SQL."),
    where: str = typer.Option(None, "--where", help=WHERE_HELP),
    n: int = typer.Option(20, "-n", min=1, help="How many tags."),
    min_count: int = typer.Option(20, "--min-count", help="Leave out tags on fewer posts."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Recommended prompt tags for a subset; stored in the catalog for the model card."""
    from tagtune.tags.analytics import suggest_tags

    ws = _workspace(ctx)
    with _busy():
        res = suggest_tags(ws, subset, against=against, where=where, n=n, min_count=min_count)
    if as_json:
        return print_json(res.to_dict())
    title = (
        f"recommended tags for {res.subset} ({res.subset_posts:,} posts) "
        f"against {res.against} ({res.posts:,} posts), min count {res.min_count}"
    )
    console.print(_table(title, res.tags, True, res.posts))
    console.print(Text("prompt:", style="bold"))
    console.print(res.prompt or "(no tag passes the filters)", markup=False, soft_wrap=True)
    console.print(f"stored in recommended_tags (subset {res.subset!r})", markup=False)
    if res.note:
        err_console.print(f"note: {res.note}", markup=False, soft_wrap=True)


@tags_app.command()
def chart(
    ctx: typer.Context,
    out: Path = typer.Option(None, "--out", help="PNG to write (default: WS/out/tags.png)."),
    subset: str = typer.Option("all", "--subset", help=SUBSET_HELP),
    where: str = typer.Option(None, "--where", help=WHERE_HELP),
    n: int = typer.Option(30, "-n", min=1, help="How many top tags."),
    force: bool = typer.Option(False, "--force", help="Replace an existing chart."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Bar chart of the top tags and of the quality/rating/period distribution (PNG)."""
    from tagtune.tags.chart import write_tags_chart

    ws = _workspace(ctx)
    out = out or ws.out_dir / "tags.png"
    with _busy():
        res = write_tags_chart(ws, out, subset=subset, where=where, n=n, force=force)
    if as_json:
        return print_json(res.to_dict())
    console.print(f"wrote {res.out} ({res.bytes:,} bytes): top {len(res.top)} tags of {res.subset}")
    for group, items in res.distributions.items():
        line = f"  {group}: " + ", ".join(f"{t} {c:,}" for t, c in items)
        console.print(line, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `tags` command group to the app."""
    app.add_typer(tags_app, name="tags")
