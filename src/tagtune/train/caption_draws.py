"""Tag shuffle and tag dropout inside a caption's groups (what one training draw sees).

The caption builders store the group of every tag (`captions.groups`: artist, copyright,
character, general, ..., quality, rating, period, in the recipe's caption order). With
`shuffle_scope = "general"` only the general group is shuffled and thinned: what comes
before it (the artist, copyright and character groups, or the first `keep_tokens` tags if
more) stays in front, and what comes after it (quality, rating, period tokens) stays at
the end, as the reference caption order puts them. `shuffle_scope = "caption"` (or a
caption without groups) shuffles every tag after `keep_tokens`, as sd-scripts does.
Protected tags (the stage's list, and the person-count tags by default) are never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tagtune.captions.rules import tag_text
from tagtune.recipe.model import CaptionConfig, StageConfig

SHUFFLED_GROUP = "general"


def movable_range(
    tags: Sequence[str], groups: Sequence[str], keep_tokens: int, scope: str
) -> tuple[int, int]:
    """[start, stop) of the tags a draw may shuffle or drop; the others stay where they are.

    "general" scope: the general group's span, its start pushed past `keep_tokens` (empty
    when the caption has no general tag); a caption without groups falls back to the
    "caption" scope: every tag after `keep_tokens`.
    """
    n = len(tags)
    start = min(keep_tokens, n)
    if scope != "general" or len(groups) != n:
        return start, n
    general = [i for i, g in enumerate(groups) if g == SHUFFLED_GROUP]
    if not general:  # nothing to shuffle: every tag belongs to a group that stays in place
        return n, n
    stop = general[-1] + 1
    return min(max(start, general[0]), stop), stop


def protected_texts(stage: StageConfig, caption: CaptionConfig) -> frozenset[str]:
    """Caption texts tag dropout never drops: the stage's list and (by default) count tags.

    Each name is taken as written and as a Danbooru name turned into caption text, so
    `multiple_girls` and `multiple girls` both protect the caption's `multiple girls`.
    """
    names = list(stage.protected_tags)
    if stage.protect_count_tags:
        names += caption.count_tags
    return frozenset(t for name in names for t in (name, tag_text(name, caption)))


def draw_tags(
    tags: Sequence[str],
    groups: Sequence[str],
    protected: frozenset[str],
    stage: StageConfig,
    gen: torch.Generator,
) -> list[str]:
    """The tags of one draw: dropout then shuffle inside `movable_range`, the rest in place.

    Draws len(movable) values for dropout and one permutation of the survivors, from `gen`.
    """
    start, stop = movable_range(tags, groups, stage.keep_tokens, stage.shuffle_scope)
    middle = list(tags[start:stop])
    if stage.tag_dropout:
        draws = torch.rand(len(middle), generator=gen).tolist()
        middle = [
            t
            for t, d in zip(middle, draws, strict=True)
            if d >= stage.tag_dropout or t in protected
        ]
    if stage.shuffle_captions:
        middle = [middle[i] for i in torch.randperm(len(middle), generator=gen).tolist()]
    return [*tags[:start], *middle, *tags[stop:]]
