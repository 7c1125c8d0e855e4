"""The prompt line of `tags suggest`: the ranked tags in caption order, without person-count
tags that contradict each other, and a hint when `min_count` leaves few candidates.

Order: count tags first (in the recipe's `captions.count_tags` order), then the other tags
by the caption order of their groups (`captions.order`), ranking order within a group.

Contradiction rule, per person kind (girl, boy, other), walking the ranking best first:
at most one number tag (`1girl`, `2girls` ... `6+girls`) is kept; `multiple_girls` goes with
a number of 2 or more (or none) and never with `1girl`. A later tag that contradicts what
was kept is left out of the prompt (it stays in the ranking table).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_COUNT = re.compile(r"^(?:(?P<n>[0-9]+\+?)|multiple )(?P<kind>girl|boy|other)s?$")


def _norm(tag: str) -> str:
    return tag.replace("_", " ")


def _compatible(tag: str, seen: dict[str, dict[str, Any]]) -> bool:
    """Whether a count tag agrees with the count tags kept so far (recording it if so)."""
    m = _COUNT.match(_norm(tag))
    if not m:
        return True
    kind, n = m["kind"], m["n"] or "multiple"
    state = seen.setdefault(kind, {"number": None, "multiple": False})
    if n == "multiple":
        if state["number"] == "1":
            return False
        state["multiple"] = True
        return True
    if state["number"] is not None or (n == "1" and state["multiple"]):
        return False
    state["number"] = n
    return True


def prompt_tags(rows: Sequence[Any], count_tags: Sequence[str], order: Sequence[str]) -> list:
    """The rows (`.tag`, `.group`, best first) that go into the prompt, in caption order."""
    counts = [_norm(t) for t in count_tags]
    seen: dict[str, dict[str, Any]] = {}
    kept = [r for r in rows if _norm(r.tag) not in counts or _compatible(r.tag, seen)]
    first = sorted(
        (r for r in kept if _norm(r.tag) in counts), key=lambda r: counts.index(_norm(r.tag))
    )
    groups = list(order)
    rest = sorted(
        (r for r in kept if _norm(r.tag) not in counts),
        key=lambda r: groups.index(r.group) if r.group in groups else len(groups),
    )
    return [*first, *rest]


def min_count_hint(candidate_counts: np.ndarray, n: int, min_count: int) -> str:
    """A note when fewer than `n` candidates reach `min_count`: the largest value that lets
    `n` through (or 1 when there are fewer candidates than that)."""
    passing = int((candidate_counts >= min_count).sum())
    if passing >= n or min_count <= 1:
        return ""
    ranked = np.sort(candidate_counts)[::-1]
    value = int(ranked[n - 1]) if len(ranked) >= n else 1
    value = max(1, min(value, min_count - 1))
    return (
        f"only {passing} tag(s) are on at least min_count = {min_count} posts; "
        f"min_count = {value} gives {int((candidate_counts >= value).sum())}"
    )
