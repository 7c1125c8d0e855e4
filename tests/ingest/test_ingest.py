"""`tagtune ingest`: every SOURCE kind, fields, ratings, safety, idempotence, favorites."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import duckdb
import pytest

from tagtune.core.catalog import open_catalog, subset_where
from tagtune.core.errors import InputError
from tagtune.ingest import ingest, update_favorites
from tagtune.recipe.model import IngestConfig, Recipe, SafetyConfig
from tagtune.recipe.workspace import init_workspace
from tagtune.synthetic.collection import shape_image, write_collection


def post(pid: int, **over) -> dict:
    """A small API-shaped post with harmless tags."""
    p = {
        "id": pid,
        "md5": f"{pid:032x}",
        "created_at": "2020-06-01T12:00:00.000-04:00",
        "score": 10,
        "fav_count": 12,
        "rating": "g",
        "file_ext": "png",
        "image_width": 128,
        "image_height": 128,
        "tag_string": "1girl artist_a blue_sky long_hair original smile",
        "tag_string_artist": "artist_a",
        "tag_string_copyright": "original",
        "tag_string_character": "",
        "tag_string_general": "1girl blue_sky long_hair smile",
        "tag_string_meta": "highres",
        "is_deleted": False,
        "parent_id": None,
    }
    p.update(over)
    return p


def write_jsonl(path: Path, posts: list[dict], extra_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(p) for p in posts]
    for at, text in sorted((extra_lines or {}).items()):
        lines.insert(at, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(ws, sql: str, params=None):
    with open_catalog(ws.catalog_path, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


@pytest.fixture
def ws(tmp_path):
    return init_workspace(tmp_path / "ws")


def save_png(path: Path, size=(128, 96), seed=0) -> bytes:
    import io

    import numpy as np

    img, _ = shape_image(np.random.default_rng(seed), size)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


# --- the synthetic collection: folder source, every problem reason, idempotence ------------


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("coll")
    info = write_collection(root / "coll", 8, seed=5)
    ws = init_workspace(root / "ws")
    first = ingest(ws, [info["folder"]], favorites=info["favorites_file"])
    second = ingest(ws, [info["folder"]], favorites=info["favorites_file"])
    return info, ws, first, second


def test_folder_source_summary(collection):
    info, ws, first, _ = collection
    assert first["posts"] == info["posts"] == 16
    assert first["images"] == 8
    assert first["favorites"] == info["favorites"] == 3
    assert first["excluded"] == {}
    assert first["problems"] == {**info["problems"], "unknown-favorite": 1}


def test_each_problem_names_file_post_and_reason(collection):
    _, ws, _, _ = collection
    got = {
        r[2]: r
        for r in rows(ws, "SELECT path, post_id, reason, detail FROM problems ORDER BY reason")
    }
    assert got["zero-byte"][3] == "file is empty"
    assert got["animated"][0].endswith(".gif") and got["animated"][1] is not None
    assert got["too-small"][3] == "32x32: shorter side under 64"
    assert got["bad-metadata"][0].endswith(".png.json")
    assert got["bad-metadata"][3].startswith("line 1 column ")
    assert got["no-metadata"][0].endswith("stray_image.png")
    assert got["duplicate"][3] == "same content as an ingested file"
    assert got["unknown-favorite"][3] == "line 7: 99999999 matches no post"


def test_reingest_changes_nothing(collection):
    _, ws, first, second = collection
    assert {k: v for k, v in second.items() if k != "added"} == {
        k: v for k, v in first.items() if k != "added"
    }
    assert list(second["added"].values())[0]["posts"] == 0
    assert list(second["added"].values())[0]["images"] == 0
    assert rows(ws, "SELECT count(*) FROM problems")[0][0] == sum(first["problems"].values())


def test_gallery_dl_lists_and_utc_date_fallback(collection):
    _, ws, _, _ = collection
    # every fifth sidecar lacks created_at: the date then comes from gallery-dl's UTC `date`
    got = rows(
        ws,
        "SELECT created_at IS NULL, date, raw->>'$.date', tags_general, "
        "raw->'$.tags_general' FROM posts WHERE id IN (SELECT post_id FROM files)",
    )
    missing = [r for r in got if r[0]]
    assert missing and all(str(r[1]) == r[2][:10] for r in missing)
    assert all(r[3] == json.loads(r[4]) for r in got)


# --- dumps: API JSON, JSONL, Parquet ------------------------------------------------------


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_api_json_with_images_matched_by_md5_id_and_gallery_dl_name(ws, tmp_path):
    images = tmp_path / "img"
    md5s = {i: _md5(save_png(tmp_path / f"{i}.png", seed=i)) for i in (1, 2, 3)}
    (images / "sub").mkdir(parents=True)
    (tmp_path / "1.png").rename(images / f"{md5s[1]}.png")  # {md5}.{ext}
    (tmp_path / "2.png").rename(images / "sub" / "2.png")  # {id}.{ext}
    (tmp_path / "3.png").rename(images / f"danbooru_3_{md5s[3]}.png")  # gallery-dl
    src = tmp_path / "posts.json"
    posts = [post(1, md5=md5s[1]), post(2, md5=md5s[2]), post(3, md5=md5s[3]), post(4)]
    src.write_text(json.dumps(posts))
    s = ingest(ws, [src], images=images)
    assert (s["posts"], s["images"], s["problems"]) == (4, 3, {})
    got = rows(ws, "SELECT post_id, path FROM files ORDER BY post_id")
    assert [(pid, Path(p).name) for pid, p in got] == [
        (1, f"{md5s[1]}.png"),
        (2, "2.png"),
        (3, f"danbooru_3_{md5s[3]}.png"),
    ]


def test_an_image_whose_md5_is_not_the_posts_is_kept_and_reported(ws, tmp_path):
    images = tmp_path / "img"
    data = save_png(images / "5.png", seed=5)  # matched by id, but not this post's bytes
    s = ingest(ws, [write_jsonl(tmp_path / "d.jsonl", [post(5)])], images=images)
    assert (s["images"], s["problems"]) == (1, {"md5-differs": 1})
    assert rows(ws, "SELECT post_id, reason, detail FROM problems") == [
        (5, "md5-differs", f"post 5 has md5 {5:032x}, the file {_md5(data)}; kept (re-encoded, "
         "or not this post's image?)"),
    ]  # fmt: skip


def test_api_json_single_post_and_malformed_file(ws, tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps(post(9), indent=2))
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1},\n {"id": ')
    s = ingest(ws, [one, bad])
    assert s["posts"] == 1
    assert rows(ws, "SELECT path, reason, detail FROM problems") == [
        (str(bad), "bad-metadata", "line 2 column 9: Expecting value")
    ]


def test_jsonl_metadata_only_with_bad_lines_named(ws, tmp_path):
    src = write_jsonl(
        tmp_path / "d.jsonl",
        [post(1), post(2), post(3)],
        extra_lines={1: "{not json", 3: json.dumps({"md5": "x"})},
    )
    s = ingest(ws, [src])
    assert s["posts"] == 3 and s["images"] == 0
    assert rows(ws, "SELECT reason, detail FROM problems ORDER BY detail") == [
        ("bad-metadata", "line 2: Expecting property name enclosed in double quotes"),
        ("bad-metadata", "record 3: no id; dropped"),
    ]


def test_parquet_dump(ws, tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [post(5), post(6, rating="e")])
    pq = tmp_path / "d.parquet"
    duckdb.execute(f"COPY (SELECT * FROM read_json('{src}', format='newline_delimited')) TO '{pq}'")
    s = ingest(ws, [pq])
    assert s["posts"] == 2
    assert rows(ws, "SELECT id, rating, tags_general, tags_meta FROM posts ORDER BY id") == [
        (5, "g", ["1girl", "blue_sky", "long_hair", "smile"], ["highres"]),
        (6, "e", ["1girl", "blue_sky", "long_hair", "smile"], ["highres"]),
    ]


def test_fields_as_read(ws, tmp_path):
    p = post(7, score=-3, tag_string_meta="absurdres highres", parent_id=5, is_deleted=True)
    ingest(ws, [write_jsonl(tmp_path / "d.jsonl", [p])])
    got = rows(
        ws,
        "SELECT md5, created_at, score, fav_count, rating_raw, file_ext, image_width, "
        "image_height, tags_artist, tags_copyright, tags_character, tags_meta, parent_id, "
        "is_deleted, raw->>'$.tag_string' FROM posts",
    )
    assert got == [
        (f"{7:032x}", "2020-06-01T12:00:00.000-04:00", -3, 12, "g", "png", 128, 128,
         ["artist_a"], ["original"], [], ["absurdres", "highres"], 5, True, p["tag_string"])
    ]  # fmt: skip


def test_unusable_field_values_are_kept_unknown_and_reported(ws, tmp_path):
    posts = [
        post(1, score="high"),
        post(2, image_width="wide", created_at="last tuesday"),
        post(3, score=None),  # JSON null: simply unknown, nothing to report
        post(4),
    ]
    s = ingest(ws, [src := write_jsonl(tmp_path / "d.jsonl", posts)])
    assert s["posts"] == 4
    assert rows(ws, "SELECT id, score, image_width, date FROM posts ORDER BY id")[:3] == [
        (1, None, 128, dt.date(2020, 6, 1)),
        (2, 10, None, None),
        (3, None, 128, dt.date(2020, 6, 1)),
    ]
    assert rows(ws, "SELECT path, post_id, reason, detail FROM problems ORDER BY detail") == [
        (str(src), 1, "bad-field", "post 1: score = 'high' is not an integer; kept as unknown"),
        (str(src), 2, "bad-field",
         "post 2: created_at = 'last tuesday' is not a date; kept as unknown"),
        (str(src), 2, "bad-field", "post 2: image_width = 'wide' is not an integer; kept as unknown"),
    ]  # fmt: skip


def test_tag_string_only_dump_puts_tags_in_general(ws, tmp_path):
    p = {"id": 1, "rating": "g", "tag_string": "1girl smile"}
    ingest(ws, [write_jsonl(tmp_path / "d.jsonl", [p])])
    assert rows(ws, "SELECT tags_general, tags_artist FROM posts") == [(["1girl", "smile"], [])]


@pytest.mark.parametrize(
    "created_at, expected",
    [
        ("2020-12-31T23:30:00.000-05:00", "2020-12-31"),  # not converted to UTC (2021-01-01)
        ("2021-01-01T00:10:00.000-05:00", "2021-01-01"),
        ("2018-01-01T00:00:00.000+09:00", "2018-01-01"),
    ],
)
def test_date_is_the_calendar_date_as_written(ws, tmp_path, created_at, expected):
    ingest(ws, [write_jsonl(tmp_path / "d.jsonl", [post(1, created_at=created_at)])])
    assert str(rows(ws, "SELECT date FROM posts")[0][0]) == expected


def test_adding_a_source_adds_only_what_is_new(ws, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [post(1), post(2)])
    b = write_jsonl(tmp_path / "b.jsonl", [post(2, score=999), post(3)])
    ingest(ws, [a])
    s = ingest(ws, [a, b])
    assert s["posts"] == 3
    assert s["added"] == {
        str(a): {"posts": 0, "images": 0, "problems": 0},
        str(b): {"posts": 1, "images": 0, "problems": 0},
    }
    assert rows(ws, "SELECT id, score FROM posts ORDER BY id") == [(1, 10), (2, 10), (3, 10)]


def test_images_added_later_for_known_posts(ws, tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [post(1), post(2)])
    ingest(ws, [src])
    images = tmp_path / "img"
    save_png(images / "1.png")
    s = ingest(ws, [src], images=images)
    assert (s["posts"], s["images"]) == (2, 1)


def test_duplicate_content_is_ingested_once(ws, tmp_path):
    images = tmp_path / "img"
    data = save_png(images / "1.png")
    (images / "2.png").write_bytes(data)
    posts = [post(1, md5=_md5(data)), post(2, md5="f" * 32)]  # 2's md5 names other bytes
    s = ingest(ws, [write_jsonl(tmp_path / "d.jsonl", posts)], images=images)
    assert (s["images"], s["problems"]) == (1, {"duplicate": 1})
    assert rows(ws, "SELECT post_id, detail FROM problems") == [
        (2, "same content as an ingested file")
    ]


def test_missing_source_is_an_error(ws, tmp_path):
    with pytest.raises(InputError) as err:
        ingest(ws, [tmp_path / "nope.jsonl"])
    assert err.value.message() == f"{tmp_path / 'nope.jsonl'}: SOURCE: no such file or folder"
    (tmp_path / "x.csv").write_text("id\n1\n")
    with pytest.raises(InputError, match="unknown source kind"):
        ingest(ws, [tmp_path / "x.csv"])


# --- ratings and the safety filter at ingest --------------------------------------------


def test_legacy_ratings(tmp_path):
    ws = init_workspace(tmp_path / "ws", Recipe(ingest=IngestConfig(legacy_ratings=True)))
    posts = [
        post(1, rating="s"),
        post(2, rating="q"),
        post(3, rating="s", tag_string_general="child smile"),
    ]
    s = ingest(ws, [write_jsonl(tmp_path / "d.jsonl", posts)])
    assert rows(ws, "SELECT id, rating_raw, rating FROM posts ORDER BY id") == [
        (1, "s", "g"),
        (2, "q", "q"),
        (3, "s", "g"),
    ]
    # old safe is still s for the safety filter
    assert s["excluded"] == {"safety: blocked tag child with rating s": 1}


def test_modern_ratings_are_kept(ws, tmp_path):
    ingest(ws, [write_jsonl(tmp_path / "d.jsonl", [post(1, rating="s")])])
    assert rows(ws, "SELECT rating_raw, rating FROM posts") == [("s", "s")]


def test_safety_filter_excludes_at_ingest(tmp_path):
    recipe = Recipe(safety=SafetyConfig(extra_blocked_tags=["blocked_extra"]))
    ws = init_workspace(tmp_path / "ws", recipe)
    images = tmp_path / "img"
    for i in range(1, 6):
        save_png(images / f"{i}.png", seed=i)
    posts = [
        post(1),
        post(2, tag_string_general="loli smile", rating="g"),
        post(3, tag_string_general="child smile", rating="g"),
        post(4, tag_string_general="child smile", rating=None),
        post(5, tag_string_meta="blocked_extra"),
    ]
    s = ingest(ws, [write_jsonl(tmp_path / "d.jsonl", posts)], images=images)
    assert s["excluded"] == {
        "safety: blocked tag blocked_extra": 1,
        "safety: blocked tag child with rating missing": 1,
        "safety: blocked tag loli": 1,
    }
    # excluded posts get no file and are in no subset
    assert s["images"] == 2
    assert rows(ws, f"SELECT id FROM posts WHERE {subset_where('all')} ORDER BY id") == [
        (1,),
        (3,),
    ]


def test_safety_filter_reads_gallery_dl_lists(ws, tmp_path):
    folder = tmp_path / "c"
    save_png(folder / "a.png")
    side = {"id": 1, "rating": "q", "tags_general": ["smile", "aged_down"], "tags_artist": []}
    (folder / "a.png.json").write_text(json.dumps(side))
    s = ingest(ws, [folder])
    assert s["excluded"] == {"safety: blocked tag aged_down with rating q": 1}
    assert s["images"] == 0


# --- favorites --------------------------------------------------------------------------


def test_favorites_by_id_and_md5_and_remark_without_reingest(ws, tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [post(i) for i in range(1, 6)])
    fav = tmp_path / "fav.txt"
    fav.write_text(f"# favorites\n1\n\n{3:032x}  # by md5\n42\n")
    s = ingest(ws, [src], favorites=fav)
    assert s["favorites"] == 2
    assert rows(ws, "SELECT id FROM posts WHERE favorite ORDER BY id") == [(1,), (3,)]
    assert rows(ws, "SELECT reason, detail FROM problems") == [
        ("unknown-favorite", "line 5: 42 matches no post")
    ]
    fav2 = tmp_path / "fav2.txt"
    fav2.write_text("5\nnot-an-id\n")
    r = update_favorites(ws, fav2)
    assert (r.entries, r.marked, r.favorites, [e.line for e in r.invalid]) == (1, 1, 3, [2])
    r = update_favorites(ws, fav2, replace=True)
    assert r.favorites == 1
    assert rows(ws, "SELECT id FROM posts WHERE favorite") == [(5,)]


def test_same_post_twice_in_one_source_first_wins(ws, tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [post(1, score=1), post(2), post(1, score=2)])
    s = ingest(ws, [src])
    assert s["posts"] == 2 and s["problems"] == {"duplicate-id": 1}
    assert rows(ws, "SELECT score FROM posts WHERE id = 1") == [(1,)]
    assert rows(ws, "SELECT post_id, detail FROM problems") == [
        (1, "record 3: post 1 again (first in record 1, kept); dropped")
    ]


def test_sidecar_without_image_keeps_the_post_and_records_no_image(ws, tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "danbooru_7_x.png.json").write_text(json.dumps(post(7)))
    s = ingest(ws, [folder])
    assert (s["posts"], s["images"], s["problems"]) == (1, 0, {"no-image": 1})
    assert rows(ws, "SELECT post_id, detail FROM problems") == [
        (7, "sidecar without an image beside it")
    ]


def test_too_large_image_at_ingest(tmp_path):
    ws = init_workspace(tmp_path / "ws", Recipe(ingest=IngestConfig(max_image_pixels=10_000)))
    images = tmp_path / "img"
    save_png(images / "1.png", size=(128, 96))
    s = ingest(ws, [write_jsonl(tmp_path / "d.jsonl", [post(1)])], images=images)
    assert (s["images"], s["problems"]) == (0, {"too-large": 1})


def test_tags_added_to_the_recipe_later_reach_existing_posts(ws, tmp_path):
    images = tmp_path / "img"
    save_png(images / "1.png", seed=1)
    save_png(images / "2.png", seed=2)
    src = write_jsonl(tmp_path / "d.jsonl", [post(1), post(2, tag_string_general="umbrella")])
    assert ingest(ws, [src], images=images)["images"] == 2
    text = ws.recipe_path.read_text()
    ws.recipe_path.write_text(
        text.replace("extra_blocked_tags = []", 'extra_blocked_tags = ["umbrella"]')
    )
    s = ingest(ws, [src], images=images)
    assert s["excluded"] == {"safety: blocked tag umbrella": 1}
    assert s["images"] == 1
    assert rows(ws, "SELECT post_id FROM files") == [(1,)]


def test_relative_sources_are_stored_as_absolute_paths(tmp_path, monkeypatch):
    """`tagtune ingest WS ./gallery` from one folder, `tagtune prepare` from another (demo bug)."""
    write_collection(tmp_path / "gallery", 3, seed=1, broken=False)
    ws = init_workspace(tmp_path / "ws")
    monkeypatch.chdir(tmp_path)
    ingest(ws, [Path("gallery")], images=None)
    paths = [Path(p) for (p,) in rows(ws, "SELECT path FROM files")]
    assert len(paths) == 3
    assert all(p.is_absolute() and p.is_file() for p in paths)


def test_recipe_changes_reach_captions_without_a_new_ingest(ws, tmp_path):
    """A tag added to the safety list, or legacy_ratings switched, takes effect at `caption`."""
    from tagtune.captions.build import build_captions

    images = tmp_path / "img"
    save_png(images / "1.png", seed=1)
    save_png(images / "2.png", seed=2)
    posts = [post(1, rating="s"), post(2, tag_string_general="umbrella")]
    ingest(ws, [write_jsonl(tmp_path / "d.jsonl", posts)], images=images)
    build_captions(ws)
    assert rows(ws, "SELECT post_id FROM captions ORDER BY 1") == [(1,), (2,)]
    assert "sensitive" in rows(ws, "SELECT caption FROM captions WHERE post_id = 1")[0][0]

    text = ws.recipe_path.read_text()
    text = text.replace("extra_blocked_tags = []", 'extra_blocked_tags = ["umbrella"]')
    ws.recipe_path.write_text(text.replace("legacy_ratings = false", "legacy_ratings = true"))
    summary = build_captions(ws)
    assert summary.captions == 1
    assert rows(ws, "SELECT post_id FROM captions") == [(1,)]
    assert [json.loads(x)["id"] for x in ws.captions_path.read_text().splitlines()] == [1]
    assert rows(ws, "SELECT rating, rating_raw FROM posts WHERE id = 1") == [("g", "s")]
    assert "safe" in rows(ws, "SELECT caption FROM captions WHERE post_id = 1")[0][0]
    assert rows(ws, "SELECT post_id FROM files") == [(1,)]
