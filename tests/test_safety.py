"""The minor-safety filter: exactly the house lists, extendable by the recipe, never shrinkable.

Every case runs through both twins of the rule (Python `blocked_reason` and the SQL used on
whole dumps) and they must agree.
"""

from __future__ import annotations

import duckdb
import pytest

from tagtune.recipe import SafetyConfig
from tagtune.safety import (
    ALWAYS_BLOCKED,
    BLOCKED_UNLESS_GENERAL,
    blocked_hits_sql,
    blocked_reason,
    blocked_sql,
)

HARMLESS = ["1girl", "long_hair", "smile", "blue_sky"]


def sql_reason(tags, rating, safety=None):
    """The SQL twin over one row (tags go through the hits first pass, as at ingest)."""
    con = duckdb.connect()
    hits = blocked_hits_sql(["tags"], safety)
    expr = blocked_sql("hits", "rating", safety)
    return con.execute(
        f"SELECT {expr} FROM (SELECT *, {hits} AS hits FROM "
        "(SELECT ?::VARCHAR[] AS tags, ?::VARCHAR AS rating))",
        [list(tags), rating],
    ).fetchone()[0]


def both(tags, rating, safety=None, legacy=False):
    py = blocked_reason(tags, rating, safety, legacy)
    assert sql_reason(tags, rating, safety) == py
    return py


def test_house_lists_are_exactly_design_md():
    assert ALWAYS_BLOCKED == ("loli", "shota", "toddlercon", "oppai_loli")
    assert BLOCKED_UNLESS_GENERAL == (
        "child",
        "female_child",
        "male_child",
        "toddler",
        "baby",
        "aged_down",
    )


@pytest.mark.parametrize("tag", ALWAYS_BLOCKED)
@pytest.mark.parametrize("rating", ["g", "s", "q", "e", None])
def test_always_blocked_at_every_rating(tag, rating):
    assert both([*HARMLESS, tag], rating) == f"safety: blocked tag {tag}"


@pytest.mark.parametrize("tag", BLOCKED_UNLESS_GENERAL)
def test_conditional_tag_allowed_at_general(tag):
    assert both([*HARMLESS, tag], "g") is None


@pytest.mark.parametrize("tag", BLOCKED_UNLESS_GENERAL)
@pytest.mark.parametrize(
    "rating, shown",
    [("s", "s"), ("q", "q"), ("e", "e"), (None, "missing"), ("", "missing")],
)
def test_conditional_tag_blocked_unless_general(tag, rating, shown):
    assert both([*HARMLESS, tag], rating) == f"safety: blocked tag {tag} with rating {shown}"


def test_legacy_s_counts_as_s_for_the_filter():
    # pre-2022 `s` meant safe (captions read it as g), but the filter judges it as s
    assert both(["child", "smile"], "s", legacy=True) == "safety: blocked tag child with rating s"
    assert blocked_reason(["child"], "s", legacy=False) == blocked_reason(
        ["child"], "s", legacy=True
    )


def test_rating_words_are_read_as_letters():
    assert both(["child"], "general") is None
    assert both(["child"], "explicit") == "safety: blocked tag child with rating e"


@pytest.mark.parametrize(
    "tags",
    [
        HARMLESS,
        ["childhood_friend_(x)", "smile"],  # contains a listed word but is another tag
        ["loli_pop_(artist)", "baby_carriage"],
        [],
    ],
)
@pytest.mark.parametrize("rating", ["g", "e", None])
def test_other_tags_pass(tags, rating):
    assert both(tags, rating) is None


def test_always_list_wins_and_names_the_first_listed_tag():
    assert both(["child", "shota", "loli"], "e") == "safety: blocked tag loli"


def test_tags_compare_case_insensitively():
    assert both(["Loli"], "g") == "safety: blocked tag loli"


@pytest.mark.parametrize(
    "extra, tags, rating, expected",
    [
        ({"extra_blocked_tags": ["my tag"]}, ["my_tag"], "g", "safety: blocked tag my_tag"),
        (
            {"extra_blocked_unless_general": ["school_uniform"]},
            ["school_uniform"],
            "s",
            "safety: blocked tag school_uniform with rating s",
        ),
        ({"extra_blocked_unless_general": ["school_uniform"]}, ["school_uniform"], "g", None),
        # extra tags only add: the house lists still apply
        ({"extra_blocked_tags": ["my_tag"]}, ["toddlercon"], "g", "safety: blocked tag toddlercon"),
        (
            {"extra_blocked_unless_general": ["x"]},
            ["baby"],
            "q",
            "safety: blocked tag baby with rating q",
        ),
    ],
)
def test_recipe_extra_tags_only_add(extra, tags, rating, expected):
    assert both(tags, rating, SafetyConfig(**extra)) == expected


def test_recipe_has_no_way_to_remove_a_house_tag():
    assert set(SafetyConfig.model_fields) == {
        "extra_blocked_tags",
        "extra_blocked_unless_general",
    }
