"""`tagtune caption`: captions table, captions.jsonl, sidecars, --show and --json."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tagtune.captions import build as caption_build
from tagtune.captions import fast as caption_fast
from tagtune.captions import write as caption_write
from tagtune.captions.build import build_captions, show_caption
from tagtune.captions.sidecars import sidecar_path
from tagtune.captions.tokens import TokenCounter
from tagtune.cli.main import app
from tagtune.core.catalog import open_catalog
from tagtune.core.errors import InputError, WorkspaceError
from tagtune.ingest.verdicts import sync_with_recipe
from tagtune.recipe.model import parse_recipe
from tagtune.recipe.workspace import init_workspace, workspace_recipe

POSTS = """
INSERT INTO posts (id, md5, score, rating, date, created_at, tags_artist, tags_copyright,
                   tags_character, tags_general, tags_meta, favorite, excluded) VALUES
 (1, 'aa', 150, 'e', DATE '2021-01-01', NULL, ['some_artist'], ['original'], [],
  ['smile', '1girl', '+_+', 'long_hair'], ['highres'], TRUE, NULL),
 (2, 'bb', NULL, NULL, NULL, '2019-05-05T01:00:00.000+09:00', [], NULL, ['long_hair'],
  ['long_hair', 'blue_sky'], [], FALSE, NULL),
 (3, 'cc', 5, 'g', NULL, NULL, [], NULL, [], ['smile'], [], FALSE, 'blocked: test')
"""
LATE_POST = """
INSERT INTO posts (id, md5, score, rating, date, tags_copyright, tags_general, favorite)
VALUES (4, 'dd', -6, 'g', DATE '2010-12-31', ['original'], ['1girl', '2koma'], FALSE)
"""


@pytest.fixture()
def ws(tmp_path):
    w = init_workspace(tmp_path / "ws")
    (w.root / "images").mkdir()
    for name in ("a.png", "d.jpg"):
        (w.root / "images" / name).write_bytes(b"not checked here")
    with open_catalog(w.catalog_path) as con:
        sync_with_recipe(
            con, workspace_recipe(w)
        )  # judged as ingest leaves it (keeps post 3's exclusion)
        con.execute(LATE_POST)  # stored before the others: outputs still come in id order
        con.execute(POSTS)
        con.execute(
            "INSERT INTO files VALUES (1, 'images/a.png', 'h1', 64, 64, 'png', 1), "
            "(4, 'images/d.jpg', 'h4', 64, 64, 'jpeg', 1)"
        )
    return w


def test_captions_jsonl_format_and_excluded_posts_absent(ws):
    summary = build_captions(ws)
    lines = [json.loads(x) for x in ws.captions_path.read_text().splitlines()]
    assert [x["id"] for x in lines] == [1, 2, 4]  # post 3 is excluded
    counter = TokenCounter()
    assert [x["tokens"] for x in lines] == counter.count_texts([x["caption"] for x in lines])
    assert lines[0] == {
        "id": 1,
        "md5": "aa",
        "file": "images/a.png",
        "caption": "some artist, original, 1girl, +_+, long hair, smile, masterpiece, nsfw, "
        "explicit, newest",
        "tokens": lines[0]["tokens"],
        "favorite": True,
    }
    assert lines[1]["file"] is None and lines[1]["caption"] == "long hair, blue sky, recent"
    assert lines[2]["caption"] == "original, 1girl, 2koma, worst quality, safe, oldest"
    assert list(lines[1]) == ["id", "md5", "file", "caption", "tokens", "favorite"]
    assert (summary.captions, summary.with_file, summary.without_file, summary.excluded) == (
        3,
        2,
        1,
        1,
    )
    assert summary.missing == {"score": 1, "rating": 1, "date": 0}
    assert summary.quality["masterpiece"] == 1 and summary.quality["worst quality"] == 1
    assert summary.rating == {"safe": 1, "sensitive": 0, "nsfw": 1, "explicit": 1}
    assert summary.period == {"newest": 1, "recent": 1, "mid": 0, "early": 0, "oldest": 1}


def test_captions_table_holds_tags_groups_and_tokens(ws):
    build_captions(ws)
    with open_catalog(ws.catalog_path, read_only=True) as con:
        rows = con.execute(
            "SELECT post_id, caption, tags, groups, tokens FROM captions ORDER BY post_id"
        ).fetchall()
    assert [r[0] for r in rows] == [1, 2, 4]
    _, caption, tags, groups, tokens = rows[1]
    assert tags == ["long hair", "blue sky", "recent"]
    assert groups == ["character", "general", "period"]
    assert caption == ", ".join(tags) and tokens == TokenCounter().count_text(caption)


def test_rebuild_drops_posts_excluded_since(ws):
    build_captions(ws)
    with open_catalog(ws.catalog_path) as con:
        con.execute("UPDATE posts SET excluded = 'blocked: later' WHERE id = 1")
    build_captions(ws)
    with open_catalog(ws.catalog_path, read_only=True) as con:
        ids = [r[0] for r in con.execute("SELECT post_id FROM captions ORDER BY 1").fetchall()]
    assert ids == [2, 4]
    assert [json.loads(x)["id"] for x in ws.captions_path.read_text().splitlines()] == [2, 4]


def test_sidecars_beside_each_image(ws):
    summary = build_captions(ws, sidecars=True)
    assert summary.sidecars == 2
    assert sidecar_path(ws.root / "images" / "a.png") == ws.root / "images" / "a.txt"
    assert (ws.root / "images" / "a.txt").read_text().startswith("some artist, original, 1girl")
    assert (ws.root / "images" / "d.txt").read_text() == (
        "original, 1girl, 2koma, worst quality, safe, oldest"
    )
    assert sorted(p.name for p in (ws.root / "images").iterdir()) == [
        "a.png", "a.txt", "d.jpg", "d.txt",
    ]  # fmt: skip


def test_sidecar_of_a_post_excluded_since_is_removed(ws):
    build_captions(ws, sidecars=True)
    with open_catalog(ws.catalog_path) as con:
        con.execute("UPDATE posts SET excluded = 'blocked: later' WHERE id = 1")
    summary = build_captions(ws, sidecars=True)
    assert (summary.sidecars, summary.sidecars_removed) == (1, 1)
    assert sorted(p.name for p in (ws.root / "images").iterdir()) == ["a.png", "d.jpg", "d.txt"]
    assert build_captions(ws, sidecars=True).sidecars_removed == 0


def test_recipe_changes_are_used(ws):
    recipe = parse_recipe({"caption": {"order": ["artist", "general", "meta"]}})
    init_workspace(ws.root, recipe=recipe, force=True)
    build_captions(ws)
    first = json.loads(ws.captions_path.read_text().splitlines()[0])
    assert first["caption"] == "some artist, 1girl, +_+, long hair, smile, highres"


def test_show_explains_one_post(ws):
    info = show_caption(ws, 2)
    assert info["caption"] == "long hair, blue sky, recent"
    why = {g["group"]: g for g in info["groups"]}
    assert why["general"]["tags"] == ["blue sky"]  # long hair came first as a character tag
    assert why["quality"]["why"] == "no score: no quality token"
    assert why["period"]["why"] == "date 2019-05-05 in [2018-01-01, 2021-01-01)"
    excluded = show_caption(ws, 3)
    assert excluded["excluded"] == "blocked: test" and excluded["caption"] is None
    assert excluded["groups"] == []  # an excluded post's tags are not shown either
    with pytest.raises(InputError) as exc:
        show_caption(ws, 99)
    assert exc.value.message() == f"{ws.catalog_path}: id = 99: no such post in the catalog"


def test_cli_json_summary(ws):
    result = CliRunner().invoke(app, ["caption", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["captions"] == 3 and data["tokenizer"] in ("clip-bpe", "approximate")
    assert set(data["over"]) == {"75", "150", "225"}
    assert sum(h["count"] for h in data["histogram"]) == 3
    assert set(data["group_tokens"]) == {
        "artist", "copyright", "character", "general", "quality", "rating", "period",
    }  # fmt: skip
    assert data["missing"] == {"score": 1, "rating": 1, "date": 0}


def test_cli_show_and_table_summary(ws):
    runner = CliRunner()
    shown = runner.invoke(app, ["caption", str(ws.root), "--show", "1", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["groups"][4]["why"] == "score 150 in [150, inf)"
    table = runner.invoke(app, ["caption", str(ws.root), "--show", "1"])
    assert "masterpiece" in table.output and "score 150 in [150, inf)" in table.output
    summary = runner.invoke(app, ["caption", str(ws.root), "--sidecars"])
    assert summary.exit_code == 0, summary.output
    assert "captions written" in summary.output and "over 75 / 150 / 225" in summary.output
    assert (ws.root / "images" / "a.txt").exists()


def test_empty_catalog_and_missing_catalog(tmp_path):
    w = init_workspace(tmp_path / "empty")
    with pytest.raises(WorkspaceError) as exc:
        build_captions(w)
    assert exc.value.message() == f"{w.catalog_path}: no catalog yet"
    with open_catalog(w.catalog_path):
        pass
    summary = build_captions(w)
    assert summary.captions == 0 and summary.tokens_max == 0
    assert w.captions_path.read_text() == ""


def _outputs(ws):
    with open_catalog(ws.catalog_path, read_only=True) as con:
        rows = con.execute(
            "SELECT post_id, caption, tags, groups, tokens FROM captions ORDER BY post_id"
        ).fetchall()
    return rows, ws.captions_path.read_bytes()


def test_chunked_build_writes_the_same_bytes(ws, monkeypatch):
    whole = build_captions(ws)
    expected = _outputs(ws)
    monkeypatch.setattr(caption_build, "CHUNK_ROWS", 2)  # chunks of 2 and 1 posts
    monkeypatch.setattr(caption_write, "BATCH_ROWS", 1)
    chunked = build_captions(ws)
    assert _outputs(ws) == expected
    assert chunked.to_json() | {"seconds": 0} == whole.to_json() | {"seconds": 0}


@pytest.mark.parametrize("where", ["build", "write"])
def test_a_failure_keeps_the_previous_captions(ws, monkeypatch, where):
    build_captions(ws)
    before = _outputs(ws)
    with open_catalog(ws.catalog_path) as con:
        con.execute("UPDATE posts SET excluded = 'blocked: later' WHERE id = 1")
    monkeypatch.setattr(caption_build, "CHUNK_ROWS", 1)
    calls = []

    def fail_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*args)

    if where == "build":
        real = caption_fast.build_caption_arrays
        monkeypatch.setattr(caption_fast, "build_caption_arrays", fail_second)
    else:
        real = caption_write.ChunkWriter._next  # on DuckDB's thread, mid-INSERT
        monkeypatch.setattr(caption_write.ChunkWriter, "_next", fail_second)
    with pytest.raises(RuntimeError, match="disk full"):
        build_captions(ws)
    assert _outputs(ws) == before  # table and captions.jsonl: all or nothing
    assert sorted(p.name for p in ws.root.iterdir() if p.name.startswith(".captions")) == []


@pytest.mark.parametrize(
    "ids",
    [
        [1, 2, 3, 4],  # in order: returned as is
        [5, 6, 7, 1, 2, 3, 4],  # sorted runs: put in order by slices
        [3, 1, 2],
        [9, 2, 7, 1, 8, 3, 6, 4, 5] * 30,  # scattered (with repeats): gathered, stable
    ],
)
def test_posts_come_in_id_order(ids):
    import pyarrow as pa

    table = pa.table({"id": ids, "row": list(range(len(ids)))})
    got = caption_build._in_id_order(table).to_pylist()
    assert got == sorted(table.to_pylist(), key=lambda r: r["id"])
