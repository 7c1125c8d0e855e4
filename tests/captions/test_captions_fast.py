"""The vectorised caption builder gives exactly the reference captions, tokens included."""

from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pytest

from tagtune.captions.fast import build_caption_arrays
from tagtune.captions.rules import build_caption
from tagtune.captions.tokens import TokenCounter
from tagtune.recipe.model import CaptionConfig, parse_recipe

POOL = [
    "1girl", "1boy", "2girls", "multiple_girls", "6+boys", "1other", "2koma", "3d", "1990s_(style)",
    "+_+", "0_0", "^_^", "o_o", "(o)_(o)", "<|>_<|>", "||_||", "long_hair", "long hair", "smile",
    "blue_sky", "saber_(fate)", "fate_(series)", "some_artist", "highres", "nsfw", "safe",
    "k-on!", "ranma_1/2", ":d", ">:)", "café", "日本語_タグ", "best_quality", "", None,
    "Oppai_Loli", "child", "baby_carriage",  # listed by the safety filter (judged again)
]  # fmt: skip
GROUPS = ("artist", "copyright", "character", "general", "meta")
SCHEMA = pa.schema(
    [("score", pa.int32()), ("rating", pa.string()), ("pdate", pa.date32())]
    + [(f"tags_{g}", pa.list_(pa.string())) for g in GROUPS]
)


def random_posts(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    posts = []
    for _ in range(n):
        p = {
            "score": rng.choice([None, 150, 149, 100, 75, 25, 0, -1, -5, -6, rng.randint(-20, 300)]),
            "rating": rng.choice([None, "g", "s", "q", "e", "x"]),
            "pdate": rng.choice([None, dt.date(2021, 1, 1), dt.date(2020, 12, 31),
                                 dt.date(2011, 1, 1), dt.date(2010, 12, 31),
                                 dt.date(2005, 1, 1) + dt.timedelta(days=rng.randint(0, 7500))]),
        }  # fmt: skip
        for g in GROUPS:
            k = rng.choice([0, 1, 2, 5, 12])
            p[f"tags_{g}"] = None if rng.random() < 0.05 else [rng.choice(POOL) for _ in range(k)]
        posts.append(p)
    return posts


CONFIGS = {
    "default": CaptionConfig(),
    "meta-first-escaped": parse_recipe(
        {
            "caption": {
                "order": ["meta", "rating", "general", "period", "artist"],
                "escape_parentheses": True,
                "keep_underscores": ["long_hair"],
                "underscore_max_len": 0,
                "ratings": {"e": ["nsfw", "explicit", "nsfw"], "g": []},
                "quality_bands": [{"min": 0.5, "tag": "pos"}, {"tag": "nonpos"}],
            }
        }
    ).caption,
    "quality-only-pipe": parse_recipe(
        {"caption": {"order": ["quality", "character"], "separator": " | "}}
    ).caption,
    "no-space-separator": parse_recipe({"caption": {"separator": ","}}).caption,
}


@pytest.fixture(scope="module")
def posts():
    return random_posts(400, seed=7)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_path_matches_reference(posts, name):
    cfg = CONFIGS[name]
    counter = TokenCounter(cfg.separator)
    res = build_caption_arrays(pa.Table.from_pylist(posts, schema=SCHEMA), cfg, counter)
    ref_posts = [{**p, "date": p["pdate"]} for p in posts]
    expected = [build_caption(p, cfg) for p in ref_posts]
    assert res.caption.to_pylist() == [e.text for e in expected]
    assert res.tags.to_pylist() == [e.tags for e in expected]
    assert res.groups.to_pylist() == [e.groups for e in expected]
    assert [res.blocked.get(i) for i in range(len(posts))] == [e.blocked for e in expected]
    assert any(e.blocked for e in expected) and not all(e.blocked for e in expected)
    whole = counter.count_texts([e.text for e in expected])
    assert res.tokens.tolist() == whole
    assert sum(res.group_tokens.values()) == sum(whole) or not counter.by_tag


def test_fast_path_counts_missing_fields_and_field_tokens():
    rows = [
        {"score": None, "rating": None, "pdate": None, "tags_general": ["smile"]},
        {"score": 200, "rating": "e", "pdate": dt.date(2022, 2, 2), "tags_general": None},
        {"score": 3, "rating": "x", "pdate": dt.date(2001, 2, 2), "tags_general": []},
    ]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    res = build_caption_arrays(table, CaptionConfig(), TokenCounter())
    assert res.caption.to_pylist() == [
        "smile",
        "masterpiece, nsfw, explicit, newest",
        "normal quality, oldest",
    ]
    assert res.missing == {"score": 1, "rating": 2, "date": 1}
    assert res.field_counts == {
        "quality": {"masterpiece": 1, "normal quality": 1},
        "rating": {"nsfw": 1, "explicit": 1},
        "period": {"newest": 1, "oldest": 1},
    }


def test_fast_path_on_no_posts():
    table = pa.Table.from_pylist([], schema=SCHEMA)
    res = build_caption_arrays(table, CaptionConfig(), TokenCounter())
    assert res.caption.to_pylist() == [] and res.tokens.tolist() == []
