"""Caption rules (the reference workflow, docs/design.md): table-driven, on the pure reference functions."""

from __future__ import annotations

import datetime as dt

import pytest

from tagtune.captions.rules import (
    build_caption,
    calendar_date,
    escape_parentheses,
    explain_caption,
    order_group,
    period_tag,
    quality_tag,
    rating_tags,
    tag_text,
)
from tagtune.core.errors import RecipeError
from tagtune.recipe.model import CaptionConfig, parse_recipe

CFG = CaptionConfig()


def post(**kw):
    base = {
        "tags_artist": [],
        "tags_copyright": [],
        "tags_character": [],
        "tags_general": [],
        "tags_meta": [],
        "score": None,
        "rating": None,
        "date": None,
        "created_at": None,
    }
    base.update(kw)
    return base


@pytest.mark.parametrize(
    ("score", "tag"),
    [
        (10_000, "masterpiece"),
        (150, "masterpiece"),
        (149, "best quality"),
        (100, "best quality"),
        (99, "great quality"),
        (75, "great quality"),
        (74, "medium quality"),
        (25, "medium quality"),
        (24, "normal quality"),
        (0, "normal quality"),
        (-1, "low quality"),
        (-5, "low quality"),
        (-6, "worst quality"),
        (-1000, "worst quality"),
        (None, None),
    ],
)
def test_quality_bands_are_low_inclusive(score, tag):
    assert quality_tag(score, CFG.quality_bands) == tag


@pytest.mark.parametrize(
    ("rating", "tags"),
    [("g", ["safe"]), ("s", ["sensitive"]), ("q", ["nsfw"]), ("e", ["nsfw", "explicit"]),
     (None, []), ("x", [])],
)  # fmt: skip
def test_rating_tokens(rating, tags):
    assert rating_tags(rating, CFG.ratings) == tags


PERIOD_CASES = [
    ("2025-09-15", "newest"),
    ("2021-01-01", "newest"),
    ("2020-12-31", "recent"),
    ("2018-01-01", "recent"),
    ("2017-12-31", "mid"),
    ("2015-01-01", "mid"),
    ("2014-12-31", "early"),
    ("2011-01-01", "early"),
    ("2010-12-31", "oldest"),
    ("2005-05-24", "oldest"),
]


@pytest.mark.parametrize(("day", "tag"), PERIOD_CASES)
@pytest.mark.parametrize("clock", ["T00:30:00.000+09:00", "T23:30:00.000-04:00"])
def test_period_uses_the_date_written_in_created_at(day, tag, clock):
    # 00:30+09:00 is the previous day in UTC and 23:30-04:00 the next one: the written date wins
    created_at = day + clock
    assert calendar_date(created_at) == dt.date.fromisoformat(day)
    assert period_tag(calendar_date(created_at), CFG.periods) == tag
    caption = build_caption(post(created_at=created_at), CFG).text
    assert caption == tag


@pytest.mark.parametrize(
    ("created_at", "utc_date", "expected"),
    [
        ("2025-09-15T19:27:31.639-04:00", None, dt.date(2025, 9, 15)),
        ("2025-09-15 19:27:31 -0400", None, dt.date(2025, 9, 15)),
        (None, "2025-09-15 23:27:31", dt.date(2025, 9, 15)),
        ("garbage", "2020-01-02 03:04:05", dt.date(2020, 1, 2)),
        ("2021-02-30T00:00:00+09:00", None, None),
        ("", "", None),
        (None, None, None),
    ],
)
def test_calendar_date(created_at, utc_date, expected):
    assert calendar_date(created_at, utc_date) == expected


def test_ingested_date_wins_over_created_at():
    p = post(date=dt.date(2010, 1, 1), created_at="2024-01-01T00:00:00.000-05:00")
    assert build_caption(p, CFG).text == "oldest"


def test_count_tags_first_in_alphabetical_order_against_other_digit_leading_tags():
    general = ["multiple_girls", "smile", "2koma", "1girl", "+_+", "0_0", "2girls",
               "1990s_(style)", "1boy", "6+girls", "3d", "1other"]  # fmt: skip
    assert order_group("general", general, CFG) == [
        "1boy", "1girl", "1other", "2girls", "6+girls", "multiple_girls",
        "+_+", "0_0", "1990s_(style)", "2koma", "3d", "smile",
    ]  # fmt: skip
    # count tags are only moved inside the general group
    assert order_group("character", ["2girls", "1girl"], CFG) == ["1girl", "2girls"]


@pytest.mark.parametrize(
    ("tag", "text"),
    [
        ("long_hair", "long hair"),
        ("^_^", "^_^"),
        ("o_o", "o_o"),
        ("0_0", "0_0"),
        ("+_+", "+_+"),
        ("(o)_(o)", "(o)_(o)"),
        ("<o>_<o>", "<o>_<o>"),
        ("<|>_<|>", "<|>_<|>"),
        ("||_||", "||_||"),
        ("a_b", "a_b"),
        ("ab_c", "ab c"),
        ("1990s_(style)", "1990s (style)"),
        ("fate/stay_night", "fate/stay night"),
    ],
)
def test_underscores_become_spaces_except_kaomoji(tag, text):
    assert tag_text(tag, CFG) == text


def test_reference_caption_order_and_separator():
    p = post(
        tags_artist=["some_artist"],
        tags_copyright=["original", "fate_(series)"],
        tags_character=["saber_(fate)"],
        tags_general=["smile", "long_hair", "1girl", "blue_sky", "^_^"],
        tags_meta=["highres", "absurdres"],
        score=120,
        rating="e",
        date=dt.date(2019, 6, 1),
    )
    parts = build_caption(p, CFG)
    assert parts.text == (
        "some artist, fate (series), original, saber (fate), 1girl, ^_^, blue sky, long hair, "
        "smile, best quality, nsfw, explicit, recent"
    )
    assert parts.groups == ["artist", "copyright", "copyright", "character", *["general"] * 5,
                            "quality", "rating", "rating", "period"]  # fmt: skip
    assert "highres" not in parts.tags  # no meta tags unless the recipe asks


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # a tag present as character and general appears once, where it comes first
        ({"tags_character": ["long_hair"], "tags_general": ["long_hair", "smile"]},
         ["long hair", "smile"], ),
        # two tags equal after underscore replacement
        ({"tags_general": ["long_hair", "long hair"]}, ["long hair"]),
        # the same tag twice in one list
        ({"tags_general": ["smile", "smile"]}, ["smile"]),
        # empty and missing entries are ignored
        ({"tags_general": ["", None, "smile"], "tags_artist": None}, ["smile"]),
    ],
)  # fmt: skip
def test_a_tag_never_appears_twice(fields, expected):
    assert build_caption(post(**fields), CFG).tags == expected


def test_missing_fields_give_no_token_and_no_crash():
    parts = build_caption(post(tags_general=["smile"]), CFG)
    assert parts.text == "smile"
    assert build_caption({}, CFG).text == ""


def test_parentheses_escaped_only_on_request():
    p = post(tags_character=["saber_(fate)"], tags_general=["(o)_(o)"])
    assert build_caption(p, CFG).text == "saber (fate), (o)_(o)"
    esc = CFG.model_copy(update={"escape_parentheses": True})
    assert build_caption(p, esc).text == "saber \\(fate\\), \\(o\\)_\\(o\\)"
    assert escape_parentheses("a (b) c") == "a \\(b\\) c"


def test_custom_recipe_order_bands_keep_list_meta_and_separator():
    recipe = parse_recipe(
        {
            "caption": {
                "order": ["rating", "meta", "general", "character", "quality"],
                "keep_underscores": ["blue_sky"],
                "underscore_max_len": 0,
                "quality_bands": [{"min": 10, "tag": "good"}, {"tag": "bad"}],
                "ratings": {"g": ["general"], "e": ["explicit_rating"]},
                "separator": " | ",
                "count_tags": ["2girls"],
            }
        }
    )
    p = post(
        tags_general=["blue_sky", "1girl", "2girls", "o_o"],
        tags_character=["saber_(fate)"],
        tags_meta=["highres"],
        tags_artist=["some_artist"],
        score=10,
        rating="g",
        date=dt.date(2022, 1, 1),
    )
    assert build_caption(p, recipe.caption).text == (
        "general | highres | 2girls | 1girl | blue_sky | o o | saber (fate) | good"
    )
    assert build_caption(post(score=9), recipe.caption).text == "bad"


def test_custom_period_bands():
    recipe = parse_recipe(
        {"caption": {"periods": [{"start": dt.date(2020, 6, 1), "tag": "new"}, {"tag": "old"}]}}
    )
    cfg = recipe.caption
    assert period_tag(dt.date(2020, 6, 1), cfg.periods) == "new"
    assert period_tag(dt.date(2020, 5, 31), cfg.periods) == "old"


def test_unordered_bands_are_a_recipe_error():
    with pytest.raises(RecipeError) as exc:
        parse_recipe({"caption": {"quality_bands": [{"min": 1, "tag": "a"}, {"min": 5, "tag": "b"},
                                                    {"tag": "c"}]}})  # fmt: skip
    assert exc.value.message() == "caption.quality_bands: mins must decrease, got [1.0, 5.0]"


def test_default_keep_list_is_the_design_kaomoji_list():
    assert {"(o)_(o)", "<o>_<o>", "<|>_<|>", "||_||", "^_^", "0_0", "+_+"} <= set(
        CFG.keep_underscores
    )


def test_explain_caption_names_the_band():
    p = post(score=149, rating="s", created_at="2017-12-31T23:59:59.000-05:00")
    rows = {r["group"]: r for r in explain_caption(p, CFG)}
    assert rows["quality"]["tags"] == ["best quality"]
    assert rows["quality"]["why"] == "score 149 in [100, 150)"
    assert rows["rating"]["why"] == "rating s"
    assert rows["period"]["why"] == "date 2017-12-31 in [2015-01-01, 2018-01-01)"
    assert rows["general"]["tags"] == []
    missing = {r["group"]: r["why"] for r in explain_caption(post(), CFG)}
    assert missing["quality"] == "no score: no quality token"
    assert missing["period"] == "no date: no period token"
