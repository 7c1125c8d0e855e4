"""The report's charts: matplotlib figures rendered to small SVG (text kept as text).

Pure functions of the numbers they are given, no pyplot state, no display; the same input
gives the same bytes (fixed hash salt, no date), so an unchanged chart keeps its file name.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")
GROUP_COLORS = {
    "artist": "#c44e52",
    "copyright": "#8172b3",
    "character": "#55a868",
    "general": "#4c72b0",
    "meta": "#7f7f7f",
}
_RC = {"svg.fonttype": "none", "svg.hashsalt": "tagtune-report", "font.size": 9}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=96, layout="constrained")


def short_number(value: float) -> str:
    """A bar's label that stays narrow: 950, 9,999, 55.6k, 1.2M."""
    if abs(value) < 10_000:
        return f"{value:,.0f}"
    if abs(value) < 1_000_000:
        return f"{value / 1000:.1f}k"
    return f"{value / 1_000_000:.1f}M"


def _rc():
    import matplotlib

    return matplotlib.rc_context(_RC)


def _svg(fig) -> bytes:
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    FigureCanvasSVG(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    ylabel: str = "posts",
    color: str = PALETTE[0],
    width: float = 4.0,
) -> bytes:
    """Vertical bars, one per label, each with its value written on top (SVG bytes)."""
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    with _rc():
        fig = _figure(max(width, 0.3 * len(labels) + 1.2), 2.8)
        ax = fig.add_subplot()
        bars = ax.bar(range(len(labels)), list(values), color=color)
        ax.bar_label(bars, labels=[short_number(v) for v in values], fontsize=7)
        rotate = len(labels) > 8 or max((len(s) for s in labels), default=0) > 8
        ax.set_xticks(
            range(len(labels)),
            list(labels),
            rotation=60 if rotate else 0,
            ha="right" if rotate else "center",
            fontsize=8,
        )
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.set_title(title)
        ax.margins(y=0.15)
        return _svg(fig)


def top_tags_chart(panels: dict[str, list[tuple[str, int]]], title: str) -> bytes:
    """One horizontal bar panel per tag category (most frequent on top), side by side."""
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    shown = {k: v for k, v in panels.items() if v}
    rows = max((len(v) for v in shown.values()), default=1)
    with _rc():
        fig = _figure(3.2 * max(1, min(len(shown), 3)), (0.2 * rows + 1.0) * -(-len(shown) // 3))
        for i, (group, items) in enumerate(shown.items()):
            ax = fig.add_subplot(-(-len(shown) // 3), min(len(shown), 3), i + 1)
            names = [t for t, _ in items][::-1]
            ax.barh(range(len(items)), [c for _, c in items][::-1], color=GROUP_COLORS[group])
            ax.set_yticks(range(len(items)), names, fontsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
            ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(group)
        fig.suptitle(title)
        return _svg(fig)


@dataclass
class Curves:
    """What one stage's chart shows; steps are optimizer steps (x axis of every panel)."""

    loss: list[tuple[int, float]] = field(default_factory=list)
    lrs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    val_wrong: list[tuple[int, float]] = field(default_factory=list)
    gap: list[tuple[int, float]] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)
    epoch_steps: list[int] = field(default_factory=list)
    total_steps: int = 0


def _smooth(values: list[float], window: int) -> list[float]:
    import numpy as np

    if window < 2 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = [float(np.mean(values[: i + 1])) for i in range(window - 1)]
    return head + list(np.convolve(values, kernel, mode="valid"))


def _marks(ax, curves: Curves, label: bool) -> None:
    for x in curves.epoch_steps:
        ax.axvline(x, color="#cccccc", lw=0.6, zorder=0)
    for i, x in enumerate(curves.resumes):
        ax.axvline(
            x, color="#c44e52", ls="--", lw=1.2, label="resumed" if label and i == 0 else None
        )


def stage_chart(curves: Curves, title: str) -> bytes:
    """Loss (raw and smoothed, validation points), learning rates and the conditioning gap.

    Grey lines are epoch ends, red dashed lines the steps a run resumed from.
    """
    from matplotlib.ticker import MaxNLocator

    panels = ["loss", "lr"] + (["gap"] if curves.gap else [])
    with _rc():
        fig = _figure(7.5, 2.0 * len(panels) + 0.6)
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        ax = axes[0]
        if curves.loss:
            xs, ys = zip(*curves.loss, strict=True)
            window = len(ys) // 25
            if window > 1:
                ax.plot(xs, ys, color=PALETTE[0], alpha=0.3, lw=0.8, label="loss")
                label = f"loss, mean of {window} steps"
                ax.plot(xs, _smooth(list(ys), window), color=PALETTE[0], lw=1.5, label=label)
            else:
                ax.plot(xs, ys, color=PALETTE[0], lw=1.2, label="loss")
        for points, name, color in (
            (curves.val_loss, "validation", PALETTE[1]),
            (curves.val_wrong, "validation, wrong captions", PALETTE[4]),
        ):
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, "o-", color=color, ms=3.5, lw=1.0, label=name)
        ax.set_ylabel("loss")
        _marks(ax, curves, label=True)
        ax.legend(fontsize=7, loc="upper right")
        ax = axes[1]
        for i, (name, points) in enumerate(sorted(curves.lrs.items())):
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, color=PALETTE[i % len(PALETTE)], lw=1.2, label=name)
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useOffset=False)
        if curves.lrs:
            ax.legend(fontsize=7, loc="upper right")
        _marks(ax, curves, label=False)
        if curves.gap:
            ax = axes[2]
            xs, ys = zip(*curves.gap, strict=True)
            ax.plot(xs, ys, "o-", color=PALETTE[2], ms=3.5, lw=1.0)
            ax.axhline(0, color="#999999", lw=0.6)
            ax.set_ylabel("conditioning gap")
            _marks(ax, curves, label=False)
        axes[-1].set_xlabel("step")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        if curves.total_steps:
            axes[-1].set_xlim(0, curves.total_steps * 1.01)
        fig.suptitle(title)
        return _svg(fig)
