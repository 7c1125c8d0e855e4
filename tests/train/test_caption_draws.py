"""Tag shuffle and dropout stay inside the general group; protected tags are never dropped."""

from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pytest

from tagtune.captions.fast import build_caption_arrays
from tagtune.captions.rules import build_caption
from tagtune.captions.tokens import TokenCounter
from tagtune.core.catalog import open_catalog
from tagtune.ingest.verdicts import sync_with_recipe
from tagtune.recipe.model import CaptionConfig, StageConfig
from tagtune.recipe.workspace import init_workspace
from tagtune.synthetic.runs import latents_for, tiny_train_recipe
from tagtune.train.caption_draws import movable_range, protected_texts
from tagtune.train.data import Example, keyed_generator, transform_caption
from tagtune.train.examples import load_examples

GENERAL = ["1girl", "2boys", "multiple_girls", "long_hair", "smile", "blue_sky", "red_circle",
           "green_square", "outdoors", "solo", "star_(symbol)", "cloud"]  # fmt: skip
FRONT = {
    "artist": ["some_artist", "other_artist"],
    "copyright": ["shape_world", "colour_world"],
    "character": ["square_(shape_world)", "circle_(shape_world)"],
}
FIELDS = ("quality", "rating", "period")
SCHEMA = pa.schema(
    [("score", pa.int32()), ("rating", pa.string()), ("pdate", pa.date32())]
    + [
        (f"tags_{g}", pa.list_(pa.string()))
        for g in ("artist", "copyright", "character", "general")
    ]
)


def _posts(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    posts = []
    for _ in range(n):
        post = {
            "score": rng.choice([None, 200, 80, 0, -10]),
            "rating": rng.choice([None, "g", "s", "q", "e"]),
            "pdate": rng.choice([None, dt.date(2022, 5, 1), dt.date(2012, 3, 4)]),
            "tags_general": rng.sample(GENERAL, rng.randint(0, len(GENERAL))),
        }
        for group, pool in FRONT.items():
            post[f"tags_{group}"] = rng.sample(pool, rng.randint(0, len(pool)))
        posts.append(post)
    return posts


@pytest.fixture(scope="module")
def built():
    """(tags, groups) of 150 captions, from the vectorised builder (checked against the reference)."""
    cfg = CaptionConfig()
    posts = _posts(150, seed=3)
    res = build_caption_arrays(pa.Table.from_pylist(posts, schema=SCHEMA), cfg, TokenCounter())
    ref = [build_caption({**p, "date": p["pdate"]}, cfg) for p in posts]
    fast = list(zip(res.tags.to_pylist(), res.groups.to_pylist(), strict=True))
    assert fast == [(r.tags, r.groups) for r in ref]
    return fast


@pytest.mark.parametrize("keep_tokens", [0, 3])
def test_movable_range_of_the_fast_and_reference_builders_is_the_general_group(built, keep_tokens):
    seen_general = 0
    for tags, groups in built:
        start, stop = movable_range(tags, groups, keep_tokens, "general")
        if "general" not in groups:
            assert start == stop == len(tags)
        else:
            assert all(g not in FIELDS for g in groups[:start])
            assert all(g in FIELDS for g in groups[stop:])
            front = sum(g in FRONT for g in groups)
            assert start == max(front, min(keep_tokens, stop))
            assert set(groups[start:stop]) <= {"general"}
            seen_general += 1
    assert seen_general > 100


@pytest.mark.parametrize("keep_tokens", [0, 2, 5])
def test_shuffle_and_dropout_never_move_the_front_groups_or_the_field_tokens(built, keep_tokens):
    cfg = CaptionConfig()
    stage = StageConfig(
        name="s", shuffle_captions=True, tag_dropout=0.5, keep_tokens=keep_tokens,
        protected_tags=["blue_sky"],
    )  # fmt: skip
    protected = protected_texts(stage, cfg)
    moved = dropped = 0
    for i, (tags, groups) in enumerate(built):
        ex = Example(i, ", ".join(tags), tuple(tags), (64, 64), None, tuple(groups), protected)
        general = [t for t, g in zip(tags, groups, strict=True) if g == "general"]
        front = [t for t, g in zip(tags, groups, strict=True) if g in FRONT]
        fields = [t for t, g in zip(tags, groups, strict=True) if g in FIELDS]
        for seed in range(12):
            out = transform_caption(ex, stage, keyed_generator("t", i, seed)).split(", ")
            out = [] if out == [""] else out
            n_front = max(len(front), min(keep_tokens, len(front) + len(general)))
            assert out[: len(front)] == front
            assert out[:n_front] == list(tags[:n_front])
            assert out[len(out) - len(fields) :] == fields if fields else True
            middle = out[n_front : len(out) - len(fields)]
            assert set(middle) <= set(general)
            for must in ("1girl", "2boys", "multiple girls", "blue sky"):
                assert (must in tags) == (must in out), (must, tags, out)
            moved += middle != list(tags[n_front : len(tags) - len(fields)])
            dropped += len(out) < len(tags)
    assert moved > 100 and dropped > 100  # shuffle and dropout did happen


def test_caption_scope_shuffles_every_tag_after_keep_tokens():
    tags = ("artist a", "1girl", "smile", "sky", "masterpiece", "safe", "newest")
    groups = ("artist", "general", "general", "general", "quality", "rating", "period")
    ex = Example(1, ", ".join(tags), tags, (64, 64), None, groups)
    stage = StageConfig(name="s", shuffle_captions=True, keep_tokens=1, shuffle_scope="caption")
    outs = {transform_caption(ex, stage, keyed_generator(k)) for k in range(30)}
    assert all(o.startswith("artist a, ") for o in outs)
    assert any(not o.endswith("newest") for o in outs)
    general = StageConfig(name="s", shuffle_captions=True, keep_tokens=1)
    outs = {transform_caption(ex, general, keyed_generator(k)) for k in range(30)}
    assert all(o.endswith("masterpiece, safe, newest") for o in outs) and len(outs) > 1


def test_protected_texts_cover_count_tags_and_the_stage_list():
    cfg = CaptionConfig()
    on = protected_texts(StageConfig(name="s", protected_tags=["long_hair"]), cfg)
    assert {"1girl", "multiple girls", "6+boys", "long hair", "long_hair"} <= on
    off = protected_texts(StageConfig(name="s", protect_count_tags=False), cfg)
    assert off == frozenset()


def test_training_examples_carry_groups_and_protected_tags(tmp_path):
    recipe = tiny_train_recipe()
    ws = init_workspace(tmp_path / "ws", recipe)
    tags = ["artist a", "1girl", "smile", "masterpiece"]
    groups = ["artist", "general", "general", "quality"]
    with open_catalog(ws.catalog_path) as con:
        con.execute("INSERT INTO posts (id) VALUES (1)")
        con.execute(
            "INSERT INTO captions (post_id, caption, tags, groups, tokens) VALUES (1, ?, ?, ?, 4)",
            [", ".join(tags), tags, groups],
        )
        sync_with_recipe(con, recipe)
    [ex], missing = load_examples(ws, recipe.train.stages[0], latents_for(ws))
    assert missing == 0 and ex.groups == tuple(groups) and "1girl" in ex.protected
