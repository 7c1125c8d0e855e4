"""`tagtune tags WS top|similar|suggest|chart`: the issue's syntax, tables, --json, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from test_tags_data import Post, make_catalog
from typer.testing import CliRunner

from cli_main import invoke
from tagtune.cli.main import app
from tagtune.core.catalog import open_catalog
from tagtune.core.errors import InputError
from tagtune.tags.analytics import similar_tags, top_tags

runner = CliRunner()
G3 = ["artist", "general", "general"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Four posts: favorites 1 and 2 share `smile`; post 4 is excluded."""
    posts = [
        Post(1, ["artist a", "smile", "long hair", "masterpiece"], [*G3, "quality"], favorite=True),
        Post(
            2,
            ["artist a", "smile", "fate (series)"],
            ["artist", "general", "copyright"],
            favorite=True,
            rating="s",
        ),  # fmt: skip
        Post(3, ["artist b", "long hair", "cat"], G3, score=50),
        Post(4, ["artist b", "smile", "cat"], G3, favorite=True, excluded="blocked tag"),
    ]
    return make_catalog(tmp_path_factory.mktemp("cli") / "ws", posts).ws


def run(*args):
    return runner.invoke(app, ["tags", *map(str, args)])


def run_json(*args) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_top_json(ws):
    out = run_json(ws.root, "top", "-n", "3")
    assert (out["subset"], out["posts"], out["group"]) == ("all", 3, None)
    assert [(t["tag"], t["count"], t["share"]) for t in out["tags"]] == [
        ("artist a", 2, 2 / 3),
        ("long hair", 2, 2 / 3),
        ("smile", 2, 2 / 3),
    ]


def test_top_by_group_and_where(ws):
    out = run_json(ws.root, "top", "--group", "general", "--where", "score >= 10")
    assert (out["subset"], out["posts"]) == ("score >= 10", 1)
    assert [(t["tag"], t["count"]) for t in out["tags"]] == [("cat", 1), ("long hair", 1)]


def test_top_table(ws):
    result = run(ws.root, "top", "--subset", "favorites")
    assert result.exit_code == 0
    assert "top tags of favorites: 2 posts" in result.stdout
    assert "smile" in result.stdout and "100.0%" in result.stdout


def test_similar_json_danbooru_form(ws):
    out = run_json(ws.root, "similar", "long_hair", "-n", "2")
    assert (out["tag"], out["group"], out["count"], out["posts"]) == ("long hair", "general", 2, 3)
    assert [(t["tag"], t["count"], t["intersection"], t["jaccard"]) for t in out["tags"]] == [
        ("artist b", 1, 1, 0.5),
        ("cat", 1, 1, 0.5),
    ]


def test_suggest_json_prints_prompt_and_stores(ws):
    out = run_json(ws.root, "suggest", "--min-count", "1", "-n", "3")
    assert (out["subset"], out["against"], out["subset_posts"], out["posts"]) == (
        "favorites",
        "all",
        2,
        3,
    )
    assert [(t["tag"], t["jaccard"]) for t in out["tags"]] == [
        ("artist a", 1.0),
        ("smile", 1.0),
        ("fate (series)", 0.5),
    ]
    assert out["prompt"] == r"artist a, fate \(series\), smile"  # caption order: groups
    with open_catalog(ws.catalog_path, read_only=True) as con:
        rows = con.execute(
            "SELECT rank, tag FROM recommended_tags WHERE subset = 'favorites' ORDER BY rank"
        ).fetchall()
    assert rows == [(1, "artist a"), (2, "smile"), (3, "fate (series)")]


def test_suggest_table_has_prompt_line(ws):
    result = run(ws.root, "suggest", "--where", "rating = 's'", "--min-count", "1", "-n", "2")
    assert result.exit_code == 0, result.output
    assert "prompt:\nartist a, fate \\(series\\)\n" in result.stdout  # caption order
    assert "stored in recommended_tags (subset \"rating = 's'\")" in result.stdout


def test_suggest_whole_catalog_says_the_ranking_is_plain_frequency(ws):
    out = run_json(ws.root, "suggest", "--subset", "all", "--min-count", "1", "-n", "2")
    assert out["note"].startswith("the subset holds every post of the reference set ('all')")
    assert run_json(ws.root, "suggest", "--min-count", "1")["note"] == ""
    result = run(ws.root, "suggest", "--subset", "all", "--min-count", "1")
    assert "note: the subset holds every post" in result.stderr


def test_chart_writes_png(ws, tmp_path):
    out = tmp_path / "tags.png"
    res = run_json(ws.root, "chart", "--out", out)
    assert res["out"] == str(out) and res["bytes"] == out.stat().st_size > 10_000
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert dict(res["distributions"]["quality"]) == {"masterpiece": 1}


def test_errors_are_library_errors(ws):
    with pytest.raises(InputError) as e:
        similar_tags(ws, "smiel")
    assert e.value.message() == "tag = 'smiel': no caption has this tag; close matches: smile"
    with pytest.raises(InputError) as e:
        top_tags(ws, where="nope(")
    assert e.value.field == "where"
    result = invoke("tags", ws.root, "top", "--where", "nope(")
    assert result.code == 2 and len(result.error_lines) == 1
    assert result.error_lines[0].startswith("error: --where = 'nope(': not a subset condition")


def test_error_is_one_line_and_exit_code_2(ws):
    proc = subprocess.run(
        [sys.executable, "-m", "tagtune.cli.main", "tags", str(ws.root), "similar", "smiel"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == (
        "error: tag = 'smiel': no caption has this tag; close matches: smile"
    )


def test_not_a_workspace(tmp_path):
    result = invoke("tags", tmp_path / "nowhere", "top")
    assert result.code == 2 and "not a tagtune workspace" in result.error_lines[0]


@pytest.mark.parametrize("verb", ["top", "similar", "suggest", "chart"])
def test_every_verb_has_help(ws, verb):
    result = run(ws.root, verb, "--help")
    assert result.exit_code == 0 and "--json" in result.stdout


def test_group_help_shows_ws_before_verb():
    result = run("--help")
    assert result.exit_code == 0
    assert re.search(r"Usage: tagtune tags \[OPTIONS\] \W?WS\b", result.stdout), result.stdout
