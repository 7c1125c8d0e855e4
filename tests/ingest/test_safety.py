"""The minor-safety filter: exactly the house lists, extendable by the recipe, never shrinkable.

Every case runs through both twins of the rule (Python `blocked_reason`, and the SQL used on
whole dumps: the ingest tag normaliser, then the filter) and they must agree, hostile
spellings included.
"""

from __future__ import annotations

import functools

import duckdb
import pytest

from tagtune.ingest.safety import (
    ALWAYS_BLOCKED,
    BLOCKED_UNLESS_GENERAL,
    blocked_hits_sql,
    blocked_lists,
    blocked_reason,
    blocked_sql,
)
from tagtune.ingest.tag_normalize import split_tags_sql, sql_functions, tidy_sql
from tagtune.recipe.model import SafetyConfig

HARMLESS = ["1girl", "long_hair", "smile", "blue_sky"]

# spellings that must not hide a listed tag: (tag string as a source writes it, key it shows)
HOSTILE_SPELLINGS = [
    ("1girl\tloli", "loli"),  # tab between tags
    ("1girl\nloli", "loli"),
    ("1girl\r\nloli", "loli"),
    ("1girl\u3000loli", "loli"),  # ideographic space
    ("1girl\u00a0loli", "loli"),  # no-break space
    ("1girl\u2028loli", "loli"),  # line separator (Zl)
    ("1girl\u2029loli", "loli"),  # paragraph separator (Zp)
    ("1girl\u2003loli\u202fsmile", "loli"),  # em space, narrow no-break space
    ("1girl\x0bloli\x0c", "loli"),  # vertical tab, form feed
    ("1girl\x00loli", "loli"),  # NUL between tags
    ("lo\x00li", "loli"),  # NUL inside the word
    ("lo\x1fli", "loli"),
    ("LOLI", "loli"),
    ("Oppai_Loli", "oppai_loli"),
    ("ｌｏｌｉ", "loli"),  # full-width
    ("ＬＯＬＩ", "loli"),
    ("𝓵𝓸𝓵𝓲", "loli"),  # mathematical script letters
    ("ⓛⓞⓛⓘ", "loli"),  # circled letters
    ("lòli", "loli"),  # precomposed accent
    ("lo\u0301li", "loli"),  # combining acute
    ("l\u0307o\u0308l\u0323i", "loli"),  # several combining marks
    ("l\u20ddoli", "loli"),  # enclosing circle
    ("lo\u200bli", "loli"),  # zero-width space
    ("lo\u200cli", "loli"),  # zero-width non-joiner
    ("lo\u200dli", "loli"),  # zero-width joiner
    ("\ufeffloli", "loli"),  # BOM
    ("lo\u00adli", "loli"),  # soft hyphen
    ("\u200eloli\u200f", "loli"),  # bidi marks
    ("\u202aloli\u202c", "loli"),  # bidi embedding
    ("lo\u2060li", "loli"),  # word joiner
    ("lo\u3164li", "loli"),  # Hangul filler (default ignorable)
    ("lo\ufe0fli", "loli"),  # variation selector
    ("1girl\u200bloli", "loli"),  # zero-width space between tags
    ("_loli_", "loli"),
    ("__loli", "loli"),
    ("oppai__loli", "oppai_loli"),
    ("_Ｏｐｐａｉ__Ｌòli_", "oppai_loli"),
    ("toddler\u200bcon", "toddlercon"),
    ("lo\tli", "loli"),  # a tab inside the word
    ("ｃｈｉｌｄ", "child"),
    ("female\u3000child", "child"),  # two tags, one conditional
    ("Ａged_Ｄown", "aged_down"),
]


@functools.cache
def _connection():
    return duckdb.connect()


def sql_reason(tags, rating, safety=None):
    """The SQL twin over one row: the tags go through the ingest tag normaliser (a list is
    normalised as its elements joined by spaces), then the filter's first pass."""
    con = _connection()
    listed = set().union(*blocked_lists(safety))
    with sql_functions(con, blocked=listed) as fn:
        text = "array_to_string($tags::VARCHAR[], ' ')"
        norm = split_tags_sql(text, "'1'", "tags", fn)
        expr = blocked_sql("hits", "rating", safety)
        out = []
        for plain in (False, True):
            hits = blocked_hits_sql(["tags"], safety, plain=plain)
            row = con.execute(
                f"SELECT {expr}, tidy FROM (SELECT *, {hits} AS hits FROM "
                f"(SELECT {norm} AS tags, {tidy_sql(text)} AS tidy, $rating::VARCHAR AS rating))",
                {"tags": list(tags), "rating": rating},
            ).fetchall()[0]
            if not plain or row[1]:  # the plain first pass is used only on tidy strings
                out.append(row[0])
    assert len(set(out)) == 1, out
    return out[0]


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


@pytest.mark.parametrize(("spelling", "key"), HOSTILE_SPELLINGS)
@pytest.mark.parametrize("rating", ["g", "e", None])
def test_no_spelling_hides_a_listed_tag(spelling, key, rating):
    reason = both([*HARMLESS, spelling], rating)
    if key in ALWAYS_BLOCKED:
        assert reason == f"safety: blocked tag {key}"
    elif rating == "g":
        assert reason is None
    else:
        assert reason == f"safety: blocked tag {key} with rating {rating or 'missing'}"


@pytest.mark.parametrize(
    "extra", ["ｍｙ　Ｔａｇ", "my\u200b tag", " _My__Tag_ ", "MY\ttag", "mý tag"]
)
def test_recipe_extra_tags_are_read_in_the_same_form(extra):
    safety = SafetyConfig(extra_blocked_tags=[extra])
    assert blocked_lists(safety)[0][-1] == "my_tag"
    assert both(["My_Tag"], "g", safety) == "safety: blocked tag my_tag"
    assert both(["my\u200b_tag"], "g", safety) == "safety: blocked tag my_tag"


@pytest.mark.parametrize(
    "tags",
    [
        ["lo_li"],  # another word, not a spelling of loli
        ["lolita_fashion", "child_of_light", "babysitter"],
        ["loli\u0338"],  # combining long solidus overlay: drawn struck-through, still loli?
        ["l.o.l.i"],
    ],
)
def test_other_words_are_not_caught(tags):
    if tags == ["loli\u0338"]:  # a combining mark is removed: it is the listed word
        assert both(tags, "e") == "safety: blocked tag loli"
    else:
        assert both(tags, "e") is None
