"""`tagtune caption --sidecars` never replaces or removes a `.txt` that tagtune did not write."""

from __future__ import annotations

import pytest

from cli_main import run_cli
from tagtune.captions.build import build_captions
from tagtune.core.catalog import open_catalog
from tagtune.core.errors import InputError
from tagtune.ingest.verdicts import sync_with_recipe
from tagtune.recipe.model import parse_recipe
from tagtune.recipe.workspace import init_workspace, workspace_recipe

POSTS = """
INSERT INTO posts (id, md5, score, rating, date, tags_copyright, tags_general, favorite) VALUES
 (1, 'aa', 150, 'g', DATE '2021-01-01', ['original'], ['1girl', 'smile'], TRUE),
 (2, 'bb', 5, 'g', DATE '2021-01-01', ['original'], ['blue_sky'], FALSE)
"""
HAND_MADE = "my own caption, written by hand\n"


@pytest.fixture()
def ws(tmp_path):
    w = init_workspace(tmp_path / "ws")
    (w.root / "images").mkdir()
    for name in ("a.png", "b.png"):
        (w.root / "images" / name).write_bytes(b"not checked here")
    with open_catalog(w.catalog_path) as con:
        sync_with_recipe(con, workspace_recipe(w))
        con.execute(POSTS)
        con.execute(
            "INSERT INTO files VALUES (1, 'images/a.png', 'h1', 64, 64, 'png', 1), "
            "(2, 'images/b.png', 'h2', 64, 64, 'png', 1)"
        )
    return w


def _txt(ws, name):
    return ws.root / "images" / name


def test_a_users_sidecar_is_refused_with_a_list_and_nothing_is_written(ws, capsys):
    _txt(ws, "a.txt").write_text(HAND_MADE)
    res = run_cli(capsys, "caption", ws.root, "--sidecars")
    assert res.code == 2
    assert res.error_lines == [
        f"error: sidecars: 1 existing sidecar file(s) were not written by tagtune or were "
        f"changed since: {_txt(ws, 'a.txt')}; no sidecar was written"
    ]
    assert "--sidecars-dir DIR" in res.err and "--overwrite" in res.err
    assert _txt(ws, "a.txt").read_text() == HAND_MADE
    assert not _txt(ws, "b.txt").exists()  # none written, not even the free one


def test_sidecars_dir_writes_elsewhere_and_overwrite_replaces(ws, capsys, tmp_path):
    _txt(ws, "a.txt").write_text(HAND_MADE)
    elsewhere = tmp_path / "captions"
    res = run_cli(capsys, "caption", ws.root, "--sidecars-dir", elsewhere)
    assert res.code == 0, res.err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["a.txt", "b.txt"]
    assert (elsewhere / "a.txt").read_text() == "original, 1girl, smile, masterpiece, safe, newest"
    assert _txt(ws, "a.txt").read_text() == HAND_MADE and not _txt(ws, "b.txt").exists()

    res = run_cli(capsys, "caption", ws.root, "--sidecars", "--overwrite")
    assert res.code == 0, res.err
    assert _txt(ws, "a.txt").read_text() == "original, 1girl, smile, masterpiece, safe, newest"


def test_a_second_run_replaces_its_own_sidecars_but_not_an_edited_one(ws, capsys):
    assert run_cli(capsys, "caption", ws.root, "--sidecars").code == 0
    recipe = parse_recipe({"caption": {"order": ["general", "copyright"]}})
    init_workspace(ws.root, recipe=recipe, force=True)
    res = run_cli(capsys, "caption", ws.root, "--sidecars")  # captions changed: rewritten
    assert res.code == 0, res.err
    assert _txt(ws, "a.txt").read_text() == "1girl, smile, original"

    _txt(ws, "b.txt").write_text("blue sky, my fix")  # the user edits a tagtune sidecar
    init_workspace(ws.root, force=True)  # back to the default caption order
    res = run_cli(capsys, "caption", ws.root, "--sidecars")
    assert res.code == 2
    assert f"1 existing sidecar file(s) were not written by tagtune or were changed since: " \
           f"{_txt(ws, 'b.txt')}" in res.error_lines[0]  # fmt: skip
    assert _txt(ws, "b.txt").read_text() == "blue sky, my fix"
    assert _txt(ws, "a.txt").read_text() == "1girl, smile, original"  # nothing written


def test_excluded_posts_lose_only_their_unchanged_tagtune_sidecars(ws, capsys):
    assert run_cli(capsys, "caption", ws.root, "--sidecars").code == 0
    _txt(ws, "b.txt").write_text("edited by the user")
    with open_catalog(ws.catalog_path) as con:
        con.execute("UPDATE posts SET excluded = 'blocked: later' WHERE id IN (1, 2)")
    summary = build_captions(ws, sidecars=True)
    assert (summary.sidecars, summary.sidecars_removed, summary.sidecars_kept) == (0, 1, 1)
    assert not _txt(ws, "a.txt").exists()
    assert _txt(ws, "b.txt").read_text() == "edited by the user"


def test_a_hand_made_sidecar_of_an_excluded_post_is_not_removed(ws):
    _txt(ws, "b.txt").write_text(HAND_MADE)
    with open_catalog(ws.catalog_path) as con:
        con.execute("UPDATE posts SET excluded = 'blocked: test' WHERE id = 2")
    summary = build_captions(ws, sidecars=True)
    assert (summary.sidecars, summary.sidecars_removed) == (1, 0)
    assert _txt(ws, "b.txt").read_text() == HAND_MADE


def test_a_folder_at_a_sidecar_path_is_refused_even_with_overwrite(ws):
    _txt(ws, "a.txt").mkdir()
    with pytest.raises(InputError, match="1 sidecar path\\(s\\) are folders"):
        build_captions(ws, sidecars=True, overwrite=True)
    assert not _txt(ws, "b.txt").exists()


def test_two_images_sharing_a_name_would_share_one_sidecar(ws, tmp_path):
    other = ws.root / "more"
    other.mkdir()
    with open_catalog(ws.catalog_path) as con:
        con.execute("UPDATE files SET path = 'more/a.png' WHERE post_id = 2")
    (other / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="1 sidecar\\(s\\) would hold the captions"):
        build_captions(ws, sidecars_dir=tmp_path / "flat")
    assert not (tmp_path / "flat" / "a.txt").exists()


def test_overwrite_alone_is_refused(ws, capsys):
    res = run_cli(capsys, "caption", ws.root, "--overwrite")
    assert res.code == 2
    assert res.error_lines == ["error: --overwrite: only applies to sidecars"]


def test_a_symlinked_sidecar_or_a_file_as_sidecars_dir_is_refused(ws, tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text(HAND_MADE)
    _txt(ws, "a.txt").symlink_to(mine)
    with pytest.raises(InputError, match="1 existing sidecar file"):
        build_captions(ws, sidecars=True)
    assert mine.read_text() == HAND_MADE
    with pytest.raises(InputError, match="is not a folder"):
        build_captions(ws, sidecars_dir=mine)
