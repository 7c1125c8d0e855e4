"""`tagtune status WS --problems [--reason R] [--json]`: the problem rows, filtered and capped;
a `bad-field` row names the sidecar it came from, not the folder."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tagtune.cli.main import app
from tagtune.ingest import ingest
from tagtune.ingest.problem_list import KNOWN_REASONS
from tagtune.recipe.workspace import init_workspace
from tagtune.synthetic.collection import shape_image


def _post(pid: int, **over) -> dict:
    return {
        "id": pid, "created_at": "2020-06-01T12:00:00Z", "score": 10,
        "rating": "g", "file_ext": "png", "image_width": 64, "image_height": 64,
        "tag_string_general": "1girl blue_sky smile", "tag_string_artist": "artist_a", **over,
    }  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("problems")
    folder = root / "coll"
    folder.mkdir()
    for pid in range(1, 4):
        img, _ = shape_image(np.random.default_rng(pid), (64, 64))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        (folder / f"{pid}.png").write_bytes(buf.getvalue())
        over = {"score": "high"} if pid == 2 else {}
        (folder / f"{pid}.png.json").write_text(json.dumps(_post(pid, **over)))
    for n in range(3):  # three images without metadata
        (folder / f"orphan{n}.png").write_bytes((folder / "1.png").read_bytes())
    ws = init_workspace(root / "ws")
    ingest(ws, [folder])
    return ws, folder


def test_problems_lists_file_post_reason_and_detail(workspace):
    ws, folder = workspace
    res = CliRunner().invoke(app, ["status", str(ws.root), "--problems", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["total"] == 4 and got["left_out"] == 0
    by_reason = {}
    for row in got["problems"]:
        by_reason.setdefault(row["reason"], []).append(row)
    assert [r["file"] for r in by_reason["no-metadata"]] == [
        str(folder / f"orphan{n}.png") for n in range(3)
    ]
    (bad,) = by_reason["bad-field"]
    # the sidecar to open, not the folder it was found in
    assert (bad["file"], bad["post"], bad["stage"]) == (str(folder / "2.png.json"), 2, "ingest")
    assert "score = 'high'" in bad["detail"]


def test_reason_filters_and_limit_caps_with_a_count_of_the_rest(workspace):
    ws, folder = workspace
    runner = CliRunner()
    res = runner.invoke(app, ["status", str(ws.root), "--reason", "bad-field", "--json"])
    assert [r["post"] for r in json.loads(res.output)["problems"]] == [2]
    res = runner.invoke(app, ["status", str(ws.root), "--problems", "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert "orphan0.png" in res.output and "and 2 more" in res.output


def test_an_unknown_reason_is_one_line_listing_the_known_ones(workspace, capsys):
    from cli_main import run_cli

    ws, _ = workspace
    res = run_cli(capsys, "status", ws.root, "--reason", "bad-feild")
    assert res.code == 2
    (line,) = res.error_lines
    assert "bad-feild" in line and all(reason in line for reason in KNOWN_REASONS)
