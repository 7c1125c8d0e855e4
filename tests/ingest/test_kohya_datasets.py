"""kohya-style datasets: folders of images with caption files and sd-scripts dataset TOMLs,
from ingest to the step plan (issue 18). The end-to-end training test is in test_kohya_train."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import duckdb
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from cli_main import run_cli
from tagtune.captions.build import build_captions, show_caption
from tagtune.cli.main import app
from tagtune.core.catalog import check_subset, open_catalog
from tagtune.core.errors import InputError
from tagtune.core.workspace import Workspace
from tagtune.ingest import ingest, read_status
from tagtune.ingest.caption_posts import synthetic_id
from tagtune.ingest.caption_text import read_caption_text
from tagtune.ingest.kohya import CaptionSubset, folder_subset
from tagtune.ingest.safety import blocked_lists
from tagtune.prepare.buckets import plan_stage
from tagtune.prepare.run import plan_workspace
from tagtune.recipe.model import BucketConfig, Recipe
from tagtune.recipe.workspace import init_workspace, workspace_recipe
from tagtune.train.data import Example, batches_per_epoch, epoch_batches

runner = CliRunner()
LISTED = set().union(*blocked_lists())

CAPTIONS = {
    "3_mychar/a0.txt": "mychar, solo, red circle, blue sky",
    "3_mychar/a1.txt": "mychar, 1girl, smile, green square",
    "2_other/b0.caption": "other, outdoors, long hair",
    "2_other/b1.caption": "other, yellow star, Smile",
}
"""Two concepts with repeats (3 and 2), `.txt` and `.caption` files; captions not sorted."""
TOML = """
[general]
shuffle_caption = true
[[datasets]]
batch_size = 4
resolution = 64
  [[datasets.subsets]]
  image_dir = "3_mychar"
  num_repeats = 3
  class_tokens = "mychar"
  caption_extension = ".txt"
  [[datasets.subsets]]
  image_dir = "2_other"
  num_repeats = 2
  class_tokens = "other"
"""
"""An sd-scripts dataset TOML describing the same folders (`.caption` is its default)."""


def write_image(path: Path, colour: tuple[int, int, int], size: int = 64) -> None:
    """A small PNG with a shape, distinct per colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (size, size), colour)
    ImageDraw.Draw(im).ellipse((8, 8, size // 2, size // 2), fill=(255 - colour[0], 200, 40))
    im.save(path)


def make_kohya_folder(root: Path) -> Path:
    """The dataset of CAPTIONS (one image per caption file) and its TOML, under root/data."""
    data = root / "data"
    for i, (name, text) in enumerate(CAPTIONS.items()):
        cap = data / name
        write_image(cap.with_suffix(".png"), (40 * i + 20, 60, 120))
        cap.write_text(text, encoding="utf-8")
    (data / "dataset.toml").write_text(TOML, encoding="utf-8")
    return data


def new_ws(root: Path, **ingest_cfg) -> Workspace:
    recipe = Recipe(buckets=BucketConfig(resolution=64, min_side=64, max_side=64, step=64))
    for key, value in ingest_cfg.items():
        setattr(recipe.ingest, key, value)
    return init_workspace(root, recipe)


def catalog_rows(ws: Workspace, sql: str) -> list[tuple]:
    with open_catalog(ws.catalog_path, read_only=True) as con:
        return con.execute(sql).fetchall()


POST_FACTS = (
    "SELECT p.id, p.md5, p.folder, p.concept, p.repeats, p.caption_tags, p.tags_general, "
    "p.excluded, f.sha256 FROM posts p LEFT JOIN files f ON f.post_id = p.id ORDER BY p.id"
)


# --- reading caption text and folder names ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "caption", "danbooru"),
    [
        ("1girl, long hair,, smile ", ["1girl", "long hair", "smile"], ["1girl", "long_hair", "smile"]),
        ("b,a,b", ["b", "a"], ["b", "a"]),  # file order kept, repeats dropped
        ("Ｂｌｕｅ  sky,\tsolo\n", ["Blue sky", "solo"], ["Blue_sky", "solo"]),  # NFKC, whitespace
        ("red\u200b circle", ["red circle"], ["red_circle"]),  # hidden character removed
    ],
)  # fmt: skip
def test_caption_text_keeps_the_order_and_gives_danbooru_tags(text, caption, danbooru):
    read = read_caption_text(text, ",", LISTED)
    assert (read.caption, read.danbooru) == (caption, danbooru)


def test_caption_prefix_suffix_and_separator_as_sd_scripts_reads_them():
    read = read_caption_text("a b; c", ";", LISTED, prefix="sks; ", suffix="; end")
    assert read.caption == ["sks", "a b", "c", "end"]


@pytest.mark.parametrize(
    ("text", "listed"),
    [
        ("1girl loli smile", "loli"),  # no separators: a run of words inside one tag
        ("solo, oppai  loli", "oppai_loli"),
        ("solo, lo\u200bli", "loli"),
        ("solo, lo\tli", "loli"),  # the other reading of the hidden character
    ],
)
def test_caption_text_adds_listed_word_runs_for_the_safety_filter(text, listed):
    assert listed in read_caption_text(text, ",", LISTED).danbooru


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("10_mychar", CaptionSubset("kohya-folder", repeats=10, concept="mychar")),
        ("1_sks dog", CaptionSubset("kohya-folder", repeats=1, concept="sks dog")),
        ("images", CaptionSubset("kohya-folder")),
        ("0_mychar", "repeats must be 1 to"),
        ("12345678_x", "repeats must be 1 to"),
        ("10_", "no concept"),
    ],
)
def test_folder_names_give_repeats_and_concept(name, expected):
    got = folder_subset(name)
    if isinstance(expected, str):
        assert isinstance(got, str) and expected in got
    else:
        assert got == expected


def test_synthetic_ids_are_negative_and_stable():
    md5 = "f" * 32
    assert synthetic_id(md5) == synthetic_id(md5) == -(1 + 2**60 - 1)
    assert -(2**60) <= synthetic_id("0" * 32) < 0


# --- ingest -------------------------------------------------------------------------------------


def test_a_kohya_folder_ingests_with_repeats_concepts_and_file_order(tmp_path):
    data = make_kohya_folder(tmp_path)
    ws = new_ws(tmp_path / "ws")
    summary = ingest(ws, [data])
    assert (summary["posts"], summary["images"], summary["problems"]) == (4, 4, {})
    rows = catalog_rows(
        ws, "SELECT id, origin, folder, concept, repeats, caption_tags, tags_general FROM posts"
    )
    by_tags = {tuple(r[5]): r for r in rows}
    pid, origin, folder, concept, repeats, _, general = by_tags[
        ("mychar", "solo", "red circle", "blue sky")
    ]
    assert pid < 0 and origin == "kohya-folder"
    assert (folder, concept, repeats) == ("3_mychar", "mychar", 3)
    assert general == ["mychar", "solo", "red_circle", "blue_sky"]
    assert by_tags[("other", "yellow star", "Smile")][2:5] == ("2_other", "other", 2)
    again = ingest(ws, [data])  # re-ingesting the same folder adds nothing
    assert again["added"][str(data.resolve())]["posts"] == 0
    assert again["posts"] == 4
    summary = build_captions(ws, sidecars=True)  # never over the user's own caption files
    assert (summary.captions, summary.sidecars) == (4, 0)
    assert (data / "3_mychar" / "a0.txt").read_text() == CAPTIONS["3_mychar/a0.txt"]


def test_a_dataset_toml_gives_the_same_catalog_as_the_folder(tmp_path):
    data = make_kohya_folder(tmp_path)
    folder_ws, toml_ws = new_ws(tmp_path / "a"), new_ws(tmp_path / "b")
    ingest(folder_ws, [data])
    ingest(toml_ws, [data / "dataset.toml"])
    assert catalog_rows(folder_ws, POST_FACTS) == catalog_rows(toml_ws, POST_FACTS)
    assert len(catalog_rows(toml_ws, POST_FACTS)) == 4
    assert {r[0] for r in catalog_rows(toml_ws, "SELECT origin FROM posts")} == {"dataset-toml"}
    build_captions(folder_ws)
    build_captions(toml_ws)
    captions = "SELECT post_id, caption, tags, groups FROM captions ORDER BY post_id"
    assert catalog_rows(folder_ws, captions) == catalog_rows(toml_ws, captions)


@pytest.mark.parametrize(
    "spelling",
    ["loli", "LOLI", "Ｌｏｌｉ", "lo\u200bli", "_loli_", "Lòli", "oppai loli", "1girl loli smile"],
)
def test_a_blocked_tag_in_a_txt_caption_excludes_the_post(tmp_path, spelling):
    data = make_kohya_folder(tmp_path)
    (data / "3_mychar" / "a0.txt").write_text(f"mychar, {spelling}, solo", encoding="utf-8")
    ws = new_ws(tmp_path / "ws")
    summary = ingest(ws, [data])
    assert sum(summary["excluded"].values()) == 1
    assert summary["images"] == 3  # its image is never checked or kept
    build_captions(ws)
    captions = [r[0] for r in catalog_rows(ws, "SELECT caption FROM captions")]
    assert len(captions) == 3 and not any("mychar, " + spelling in c for c in captions)


def test_conditional_tags_block_caption_file_posts_which_have_no_rating(tmp_path):
    data = make_kohya_folder(tmp_path)
    (data / "2_other" / "b0.caption").write_text("other, child, smile", encoding="utf-8")
    ws = new_ws(tmp_path / "ws")
    assert ingest(ws, [data])["excluded"] == {"safety: blocked tag child with rating missing": 1}


def test_a_tag_added_to_the_recipe_later_excludes_the_caption_at_caption_time(tmp_path):
    """The caption is judged again on its tags and the word runs inside them (free text)."""
    data = make_kohya_folder(tmp_path)
    ws = new_ws(tmp_path / "ws")
    ingest(ws, [data])
    recipe = workspace_recipe(ws)
    recipe.safety.extra_blocked_tags = ["star"]  # a word inside the tag `yellow star`
    (ws.root / "tagtune.toml").unlink()
    ws = init_workspace(ws.root, recipe)
    build_captions(ws)
    captions = [r[0] for r in catalog_rows(ws, "SELECT caption FROM captions")]
    assert len(captions) == 3 and not any("yellow star" in c for c in captions)


def test_bad_caption_files_and_folders_are_problems_never_a_traceback(tmp_path):
    data = make_kohya_folder(tmp_path)
    write_image(data / "3_mychar" / "empty.png", (1, 2, 3))
    (data / "3_mychar" / "empty.txt").write_text(" \n", encoding="utf-8")
    write_image(data / "3_mychar" / "latin1.png", (4, 5, 6))
    (data / "3_mychar" / "latin1.txt").write_bytes("caf\xe9, solo".encode("latin-1"))
    write_image(data / "0_zero" / "z.png", (7, 8, 9))
    (data / "0_zero" / "z.txt").write_text("solo", encoding="utf-8")
    write_image(data / "3_mychar" / "nocap.png", (10, 11, 12))
    if hasattr(os, "mkfifo"):
        write_image(data / "2_other" / "fifo.png", (13, 14, 15))
        os.mkfifo(data / "2_other" / "fifo.caption")
    ws = new_ws(tmp_path / "ws")
    summary = ingest(ws, [data])
    assert summary["posts"] == 4
    problems = {
        (Path(p).name, reason, detail)
        for p, reason, detail in catalog_rows(ws, "SELECT path, reason, detail FROM problems")
    }
    assert ("empty.txt", "bad-caption", "empty caption file") in problems
    assert ("latin1.txt", "bad-caption", "not UTF-8 text (byte 0xe9 at offset 3)") in problems
    assert any(n == "z.png" and r == "bad-folder" and "'0_zero'" in d for n, r, d in problems)
    assert any(n == "nocap.png" and r == "no-metadata" for n, r, _ in problems)
    if hasattr(os, "mkfifo"):
        assert any(n == "fifo.caption" and r == "bad-caption" for n, r, _ in problems)


def test_an_image_of_a_toml_subset_without_its_caption_file_is_a_problem(tmp_path):
    data = make_kohya_folder(tmp_path)
    write_image(data / "2_other" / "alone.png", (99, 1, 1))
    ws = new_ws(tmp_path / "ws")
    summary = ingest(ws, [data / "dataset.toml"])
    assert (summary["posts"], summary["problems"]) == (4, {"no-caption": 1})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  imagedir = 'x'\n", "datasets[0].subsets[1].imagedir: unknown key"),
        ("  is_reg = true\n", "datasets[0].subsets[1].is_reg = True: regularisation images"),
        ("  num_repeats = 0\n", "datasets[0].subsets[1].num_repeats = 0: out of range"),
        ("  keep_tokens = 'two'\n", "datasets[0].subsets[1].keep_tokens = 'two': must be int"),
        ("[[datasets.subsets]]\nimage_dir = 'nowhere'\n", ".image_dir = "),
        ("[oops\n", "not a readable TOML file"),
    ],
)
def test_a_toml_with_a_bad_key_is_one_error_line_naming_it(tmp_path, capsys, extra, message):
    data = make_kohya_folder(tmp_path)
    toml = data / "dataset.toml"
    toml.write_text(TOML.replace("  num_repeats = 2\n", "") + extra, encoding="utf-8")
    ws = new_ws(tmp_path / "ws")
    with pytest.raises(InputError) as err:
        ingest(ws, [toml])
    assert message in str(err.value)
    res = run_cli(capsys, "ingest", str(ws.root), str(toml))
    assert res.code == 2
    assert len(res.error_lines) == 1 and message in res.error_lines[0]
    assert "Traceback" not in res.err + res.out


def test_keep_tokens_from_the_toml_put_the_first_tags_in_the_keep_group(tmp_path):
    data = make_kohya_folder(tmp_path)
    toml = data / "dataset.toml"
    toml.write_text(TOML.replace("[[datasets]]\n", "[[datasets]]\nkeep_tokens = 1\n"), "utf-8")
    ws = new_ws(tmp_path / "ws")
    ingest(ws, [toml])
    build_captions(ws)
    groups = {tuple(r[0]) for r in catalog_rows(ws, "SELECT groups FROM captions")}
    assert ("keep", "general", "general", "general") in groups


# --- caption files beside Danbooru metadata -----------------------------------------------------


def _danbooru_beside_a_txt(root: Path) -> Path:
    folder = root / "mixed"
    write_image(folder / "danbooru_7_x.png", (200, 10, 10))
    post = {"id": 7, "rating": "g", "score": 120, "created_at": "2020-01-02T00:00:00.000-05:00",
            "tag_string_general": "solo smile", "tag_string_artist": "someone"}  # fmt: skip
    (folder / "danbooru_7_x.png.json").write_text(json.dumps(post), encoding="utf-8")
    (folder / "danbooru_7_x.txt").write_text("from the text file, solo", encoding="utf-8")
    write_image(folder / "10_mine" / "k.png", (10, 200, 10))
    (folder / "10_mine" / "k.txt").write_text("mine, blue sky", encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("mode", "origins", "note"),
    [
        ("metadata-first", {"danbooru": 1, "kohya-folder": 1}, "metadata won"),
        ("prefer", {"kohya-folder": 2}, "the caption file won"),
        ("ignore", {"danbooru": 1}, None),
    ],
)
def test_the_recipe_says_whether_a_txt_beside_metadata_wins(tmp_path, mode, origins, note):
    folder = _danbooru_beside_a_txt(tmp_path)
    ws = new_ws(tmp_path / "ws", caption_files=mode)
    ingest(ws, [folder])
    status = read_status(ws)
    assert {o: c["posts"] for o, c in status["origins"].items()} == origins
    (got,) = status["caption_files"].values()
    assert got["mode"] == mode
    res = runner.invoke(app, ["status", str(ws.root)])
    assert res.exit_code == 0, res.output
    assert f"caption_files = {mode}" in res.output
    if note:
        assert got["with_metadata_sidecar"] == 1 and note in res.output
    if mode == "metadata-first":
        build_captions(ws)
        caps = dict(catalog_rows(ws, "SELECT post_id, caption FROM captions"))
        assert caps[7].startswith("someone, smile, solo")  # the metadata's caption
    if mode == "ignore":
        assert status["problems"] == {"no-metadata": 1}


# --- mixing, subsets, status, captions ------------------------------------------------------------


def test_danbooru_and_kohya_posts_mix_in_one_catalog(tmp_path):
    data = make_kohya_folder(tmp_path)
    danbooru = _danbooru_beside_a_txt(tmp_path)
    ws = new_ws(tmp_path / "ws")
    fav = tmp_path / "favorites.txt"
    fav.write_text(hashlib.md5((data / "2_other" / "b0.png").read_bytes()).hexdigest() + "\n7\n")
    ingest(ws, [danbooru, data / "dataset.toml"], favorites=fav)
    status = read_status(ws)
    assert status["favorites"] == 2  # a caption-file post by its image's md5, a Danbooru id
    assert {o: c["included"] for o, c in status["origins"].items()} == {
        "danbooru": 1, "kohya-folder": 1, "dataset-toml": 4}  # fmt: skip
    assert status["folders"]["3_mychar"] == {"posts": 2, "repeats": 3, "concept": "mychar"}
    build_captions(ws)
    caps = dict(catalog_rows(ws, "SELECT post_id, caption FROM captions"))
    assert caps[7] == "someone, smile, solo, best quality, safe, recent"  # sorted, with tokens
    assert "mychar, solo, red circle, blue sky" in caps.values()  # as written
    with open_catalog(ws.catalog_path, read_only=True) as con:

        def count(subset: str) -> int:
            where = check_subset(con, subset)
            return con.execute(f"SELECT count(*) FROM posts WHERE {where}").fetchone()[0]

        assert count("origin = 'dataset-toml'") == 4
        assert count("folder = '3_mychar'") == 2
        assert count("origin = 'danbooru'") == 1
        assert count("concept = 'other' AND repeats = 2") == 2
    (pid,) = [p for p, c in caps.items() if c.startswith("other, outdoors")]
    shown = show_caption(ws, pid)
    assert shown["caption"] == "other, outdoors, long hair"
    assert shown["groups"][0]["why"] == "from the caption file, in its order"


# --- repeats in the plan and in epochs -----------------------------------------------------------


def test_repeats_are_in_the_step_plan_and_the_dry_run(tmp_path):
    data = make_kohya_folder(tmp_path)
    ws = new_ws(tmp_path / "ws")
    ingest(ws, [data])
    build_captions(ws)
    plan = plan_workspace(ws)
    main = plan.stages[0]
    stage = workspace_recipe(ws).train.stages[0]
    # 2 images x 3 + 2 images x 2 = 10 shown per epoch, one 64x64 bucket, batch 4
    assert (main.images, main.images_per_epoch) == (4, 10 * stage.repeats)
    assert main.steps_per_epoch == -(-10 * stage.repeats // stage.batch_size)
    assert plan.to_json()["stages"][0]["images_per_epoch"] == 10
    res = runner.invoke(app, ["prepare", str(ws.root), "--plan"])
    assert "4 (10/epoch)" in res.output
    dry = json.loads(runner.invoke(app, ["train", str(ws.root), "--dry-run", "--json"]).stdout)
    assert (dry["stages"][0]["images"], dry["stages"][0]["steps_per_epoch"]) == (
        4, main.steps_per_epoch)  # fmt: skip
    assert plan_stage(stage.model_copy(update={"repeats": 2}), {(64, 64): 4}, 1,
                      {(64, 64): 10}).images_per_epoch == 20  # fmt: skip


def test_an_image_with_repeats_n_is_seen_n_times_per_epoch():
    examples = [
        Example(1, "a", ("a",), (64, 64), None, repeats=10),
        Example(2, "b", ("b",), (64, 64), None),
        Example(3, "c", ("c",), (64, 128), None, repeats=3),
    ]
    batches = epoch_batches(examples, batch_size=4, repeats=2, seed=0, stage_index=0, epoch=0)
    seen = [i for b in batches for i in b]
    assert [seen.count(i) for i in range(3)] == [20, 2, 6]  # folder repeats x stage repeats
    # a batch never mixes buckets: ceil(22 / 4) + ceil(6 / 4)
    assert len(batches) == batches_per_epoch(examples, 4, 2) == 6 + 2


def test_an_old_catalog_gets_the_new_columns(tmp_path):
    path = tmp_path / "catalog.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE posts (id BIGINT PRIMARY KEY, excluded VARCHAR)")
    con.execute("INSERT INTO posts VALUES (5, NULL)")
    con.close()
    with open_catalog(path, read_only=True) as con:
        assert con.execute("SELECT origin, repeats FROM posts").fetchall() == [("danbooru", 1)]
