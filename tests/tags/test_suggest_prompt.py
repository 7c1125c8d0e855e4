"""`tags suggest`: the prompt in caption order (count tags first), no contradicting person-count
tags, and a hint when --min-count leaves few candidates."""

from __future__ import annotations

import json

import pytest
from test_tags_data import Post, make_catalog
from typer.testing import CliRunner

from tagtune.cli.main import app

GEN = "general"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    posts = [
        Post(1, ["artist a", "2girls", "multiple girls", "smile"], ["artist", GEN, GEN, GEN], favorite=True),
        Post(2, ["artist a", "1girl", "1boy", "smile"], ["artist", GEN, GEN, GEN], favorite=True),
        Post(3, ["2girls", "multiple girls", "long hair"], [GEN, GEN, GEN], favorite=True),
        Post(4, ["1girl", "cat"], [GEN, GEN]),
        Post(5, ["cat", "long hair"], [GEN, GEN]),
    ]  # fmt: skip
    return make_catalog(tmp_path_factory.mktemp("suggest") / "ws", posts).ws


def _suggest(ws, *args) -> dict:
    res = CliRunner().invoke(app, ["tags", str(ws.root), "suggest", "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_the_prompt_has_count_tags_first_and_none_that_contradict(ws):
    out = _suggest(ws, "--min-count", "1")
    ranked = [t["tag"] for t in out["tags"]]
    assert {"1girl", "2girls", "multiple girls"} <= set(ranked)  # all in the ranking table
    prompt = out["prompt"].split(", ")
    girls = [t for t in prompt if t in ("1girl", "2girls", "multiple girls")]
    assert girls == ["2girls", "multiple girls"]  # the better ranked count wins; 1girl goes
    assert prompt[:3] == ["2girls", "multiple girls", "1boy"]  # count tags first
    assert prompt.index("artist a") < prompt.index("smile")  # then the caption's group order


def test_a_min_count_that_leaves_few_tags_says_which_value_would_do(ws):
    out = _suggest(ws, "--min-count", "3", "-n", "4")
    assert "min_count = 2 gives" in out["note"]
    assert _suggest(ws, "--min-count", "1", "-n", "4")["note"] == ""
