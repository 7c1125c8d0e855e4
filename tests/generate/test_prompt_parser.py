"""A1111 emphasis syntax gives the same (text, weight) segments as A1111."""

from __future__ import annotations

import pytest

from tagtune.generate.prompt_parser import escape_prompt_text, parse_prompt

CASES = [
    ("1girl, smile", [("1girl, smile", 1.0)]),
    ("", [("", 1.0)]),
    ("(smile)", [("smile", 1.1)]),
    ("((smile))", [("smile", 1.1 * 1.1)]),
    ("[smile]", [("smile", 1 / 1.1)]),
    ("[[smile]]", [("smile", 1 / 1.1 / 1.1)]),
    ("(smile:1.3)", [("smile", 1.3)]),
    ("( smile : 0.5 )", [(" smile ", 0.5)]),
    ("((smile:1.3))", [("smile", 1.3 * 1.1)]),
    (
        "1girl, (long_hair:1.2), blue_sky",
        [("1girl, ", 1.0), ("long_hair", 1.2), (", blue_sky", 1.0)],
    ),
    ("a (b [c] d) e", [("a ", 1.0), ("b ", 1.1), ("c", 1.1 / 1.1), (" d", 1.1), (" e", 1.0)]),
    # escapes are literal characters (Danbooru tags with parentheses)
    (r"hatsune_miku_\(cosplay\)", [("hatsune_miku_(cosplay)", 1.0)]),
    (r"(artist_\(name\):1.2)", [("artist_(name)", 1.2)]),
    (r"a \[b\] \\ c", [(r"a [b] \ c", 1.0)]),
    (r"a\b", [(r"a\b", 1.0)]),
    # unbalanced: a stray closer is text, an unclosed opener runs to the end
    ("smile)", [("smile)", 1.0)]),
    ("smile]", [("smile]", 1.0)]),
    ("a (smile", [("a ", 1.0), ("smile", 1.1)]),
    ("a [smile", [("a ", 1.0), ("smile", 1 / 1.1)]),
    # colons that are not weights stay text
    ("a:b, c", [("a:b, c", 1.0)]),
    ("smile:1.2)", [("smile:1.2)", 1.0)]),
    ("[smile:1.2]", [("smile:1.2", 1 / 1.1)]),
    ("(smile:1.2.3)", [("smile:1.2.3)", 1.1)]),
    # neighbouring equal weights are joined
    ("(a)(b)", [("ab", 1.1)]),
]


@pytest.mark.parametrize(("prompt", "expected"), CASES, ids=[c[0] or "empty" for c in CASES])
def test_parse_prompt_matches_a1111(prompt, expected):
    got = parse_prompt(prompt)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_escape_round_trips_literal_brackets():
    tag = r"name_(series) [v2] a\b"
    assert parse_prompt(escape_prompt_text(tag)) == [(tag, 1.0)]
