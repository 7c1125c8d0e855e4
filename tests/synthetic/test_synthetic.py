"""Synthetic Danbooru-style data: realistic shape and counts, harmless tags, deterministic."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from tagtune.ingest.safety import blocked_reason
from tagtune.synthetic.collection import (
    iter_synthetic_posts,
    synthetic_post,
    vocabulary,
    write_collection,
    write_jsonl_dump,
)

API_FIELDS = {
    "id", "md5", "created_at", "score", "fav_count", "rating", "file_ext", "image_width",
    "image_height", "tag_string", "tag_string_artist", "tag_string_copyright",
    "tag_string_character", "tag_string_general", "tag_string_meta", "is_deleted", "parent_id",
}  # fmt: skip


def test_post_has_api_fields_and_realistic_counts():
    posts = list(iter_synthetic_posts(300, seed=3))
    for p in posts:
        assert set(p) >= API_FIELDS
        assert len(p["tag_string_artist"].split()) == 1
        assert 1 <= len(p["tag_string_copyright"].split()) <= 2
        assert len(p["tag_string_character"].split()) == 1
        assert 10 <= len(p["tag_string_general"].split()) <= 31  # 10-30 + a count tag
        assert 1 <= len(p["tag_string_meta"].split()) <= 3
        assert p["rating"] in "gsqe"
        assert re.fullmatch(r"[0-9a-f]{32}", p["md5"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}-0[45]:00", p["created_at"])
        groups = [p[f"tag_string_{g}"].split() for g in ("artist", "copyright", "character", "general", "meta")]  # fmt: skip
        assert p["tag_string"].split() == sorted({t for g in groups for t in g})
        assert p["tag_string_general"].split() == sorted(p["tag_string_general"].split())
    general = [t for p in posts for t in p["tag_string_general"].split()]
    assert {"^_^", "2koma", "+_+"} <= set(vocabulary().general)
    counts = sorted(np.unique(general, return_counts=True)[1], reverse=True)
    assert counts[0] > 10 * counts[len(counts) // 2]  # Zipf-like: a few tags are very common


def test_same_seed_same_posts():
    assert list(iter_synthetic_posts(20, seed=7)) == list(iter_synthetic_posts(20, seed=7))
    a = synthetic_post(np.random.default_rng(1), 5)
    assert a == synthetic_post(np.random.default_rng(1), 5) and a["id"] == 5


def test_vocabulary_is_harmless():
    for tag in vocabulary().all_tags():
        assert blocked_reason([tag], "e") is None, tag


def test_jsonl_dump_is_one_post_per_line(tmp_path):
    path = write_jsonl_dump(tmp_path / "d.jsonl", 50, seed=2)
    lines = path.read_text().splitlines()
    assert len(lines) == 50
    assert [json.loads(line)["id"] for line in lines] == list(range(1, 51))


def test_collection_layout(tmp_path):
    info = write_collection(tmp_path / "c", 6, seed=0)
    files = sorted(p.name for p in (tmp_path / "c").rglob("*") if p.is_file())
    images = [f for f in files if re.fullmatch(r"danbooru_\d+_[0-9a-f]{32}\.(jpg|png|webp)", f)]
    assert len([f for f in images if "danbooru_1_" not in f]) >= 6
    assert any(f.endswith(".png.json") or f.endswith(".jpg.json") for f in files)
    assert any(re.fullmatch(r"danbooru_\d+_[0-9a-f]{32}\.json", f) for f in files)
    # the md5 in a good image's name is the md5 of its bytes, as on Danbooru
    good = next((tmp_path / "c").rglob(f"danbooru_{info['post_ids'][0]}_*"))
    if not good.name.endswith(".json"):
        assert hashlib.md5(good.read_bytes()).hexdigest() in good.name
    side = json.loads(next((tmp_path / "c").rglob("*.json")).read_text())
    assert {"tags_general", "tags_artist", "date", "category"} <= set(side)
    fav = info["favorites_file"].read_text()
    assert fav.startswith("#") and "99999999" in fav
    assert info["images"] == 6 and info["favorites"] == 2
    assert set(info["problems"]) == {
        "zero-byte", "truncated", "unreadable", "animated", "video", "too-small", "duplicate",
        "bad-metadata", "no-metadata",
    }  # fmt: skip
