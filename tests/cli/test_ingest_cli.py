"""The ingest, favorites and status commands: one JSON object with --json, one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tagtune.cli.main import app
from tagtune.core.errors import InputError, WorkspaceError
from tagtune.recipe.workspace import init_workspace
from tagtune.synthetic.collection import write_collection

runner = CliRunner()


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    info = write_collection(root / "coll", 5, seed=9)
    ws = init_workspace(root / "ws")
    res = runner.invoke(
        app,
        ["ingest", str(ws.root), str(info["folder"]), "--favorites",
         str(info["favorites_file"]), "--json"],
    )  # fmt: skip
    return info, ws, res


def test_ingest_json_is_exactly_one_object(ingested):
    info, _, res = ingested
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert res.stdout.count("\n") == 1
    assert list(data) == ["posts", "images", "favorites", "excluded", "problems"]
    assert data["posts"] == info["posts"]
    assert data["images"] == 5
    assert data["favorites"] == 2
    assert data["excluded"] == {}
    assert data["problems"] == {**info["problems"], "unknown-favorite": 1}


def test_ingest_table_summary(ingested):
    info, ws, _ = ingested
    res = runner.invoke(app, ["ingest", str(ws.root), str(info["folder"])])
    assert res.exit_code == 0, res.output
    assert "posts" in res.stdout and "zero-byte" in res.stdout
    assert "+0 posts, +0 images" in res.stdout


def test_status_json(ingested):
    info, ws, _ = ingested
    res = runner.invoke(app, ["status", str(ws.root), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["posts"] == info["posts"] and data["images"] == 5
    assert sum(data["ratings"].values()) == data["included"] == info["posts"]
    assert sum(data["years"].values()) == info["posts"]
    assert all(len(y) == 4 for y in data["years"])
    assert data["trainable"] == 5 and data["captions"] == 0


def test_status_table(ingested):
    _, ws, _ = ingested
    res = runner.invoke(app, ["status", str(ws.root)])
    assert res.exit_code == 0, res.output
    assert "per rating" in res.stdout and "per year" in res.stdout


def test_favorites_command(ingested):
    info, ws, _ = ingested
    fav = ws.root / "fav.txt"
    fav.write_text(f"{info['post_ids'][1]}\n# comment\n123456789\n")
    res = runner.invoke(app, ["favorites", str(ws.root), str(fav), "--replace", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {
        "entries": 2,
        "marked": 1,
        "favorites": 1,
        "unknown": ["123456789"],
        "invalid": [],
    }


def test_errors_name_the_file(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    res = runner.invoke(app, ["ingest", str(ws.root), str(tmp_path / "missing")])
    assert isinstance(res.exception, InputError)
    assert res.exception.message() == f"{tmp_path / 'missing'}: SOURCE: no such file or folder"
    res = runner.invoke(app, ["status", str(ws.root)])
    assert isinstance(res.exception, WorkspaceError)
    assert res.exception.message() == f"{ws.catalog_path}: no catalog yet"


def test_ingest_a_dump_with_images_from_the_command_line(tmp_path):
    from tagtune.synthetic.collection import iter_synthetic_posts, shape_image

    images = tmp_path / "images"
    images.mkdir()
    posts = list(iter_synthetic_posts(3, seed=4))
    import numpy as np

    rng = np.random.default_rng(0)
    for p in posts[:2]:  # two posts have their image, named by id; one is metadata only
        img, _ = shape_image(rng, (96, 96))
        img.save(images / f"{p['id']}.png")
    dump = tmp_path / "posts.jsonl"
    dump.write_text("".join(json.dumps(p) + "\n" for p in posts))
    ws = init_workspace(tmp_path / "ws")
    res = runner.invoke(app, ["ingest", str(ws.root), str(dump), "--images", str(images), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["posts"], data["images"]) == (3, 2)
