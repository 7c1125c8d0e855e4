"""No spelling walks a listed tag past the safety filter, from any source; captions are judged again.

Each source kind (gallery-dl sidecars with tag strings or with tag lists, API JSON, JSONL and
Parquet dumps) reads the same hostile tag strings. Before the one tag normaliser, tags were
split on the ASCII space only and compared as written: every row below marked `hidden`
or with another spelling was included. Captions are judged again on what they show.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tagtune.captions.build import build_captions, show_caption
from tagtune.captions.fast import build_caption_arrays
from tagtune.captions.rules import build_caption
from tagtune.captions.sidecars import sidecar_path
from tagtune.captions.tokens import TokenCounter
from tagtune.core.catalog import open_catalog
from tagtune.ingest import ingest
from tagtune.ingest.tag_normalize import filter_key, normalize_tags, split_tags
from tagtune.ingest.verdicts import sync_with_recipe
from tagtune.recipe.model import CaptionConfig, parse_recipe
from tagtune.recipe.workspace import init_workspace, workspace_recipe

LOLI = "safety: blocked tag loli"

# id, tag_string_general as the source writes it, rating, verdict, tags stored, hidden chars
CASES = [
    (1, "1girl smile", "g", None, ["1girl", "smile"], False),
    (2, "1girl\tloli", "g", LOLI, ["1girl", "loli"], True),
    (3, "1girl\u3000loli", "g", LOLI, ["1girl", "loli"], False),
    (4, "1girl\u00a0smile", "g", None, ["1girl", "smile"], False),
    (5, "1girl\nloli", "e", LOLI, ["1girl", "loli"], True),
    (6, "ｌｏｌｉ smile", "g", LOLI, ["loli", "smile"], False),
    (7, "lo\u200bli", "g", LOLI, ["loli"], True),
    (8, "Lo\u0301li", "s", LOLI, ["Lóli"], False),
    (9, "_loli_ smile", "g", LOLI, ["_loli_", "smile"], False),
    (10, "1girl\x00smile", "g", None, ["1girlsmile"], True),
    (11, "female\u2028child", "s", "safety: blocked tag child with rating s", ["female", "child"],
     False),
    (12, "female\u2029child", "g", None, ["female", "child"], False),
    (13, "1girl\x00loli", "g", LOLI, ["1girlloli", "loli"], True),
    (14, "CHILD smile", "e", "safety: blocked tag child with rating e", ["CHILD", "smile"], False),
    (15, "\ufeffsmile \u202ablue_sky\u202c", "g", None, ["smile", "blue_sky"], True),
    (16, "Ｏｐｐａｉ__Ｌｏｌｉ", "g", "safety: blocked tag oppai_loli", ["Oppai__Loli"], False),
    (17, "𝓼𝓱𝓸𝓽𝓪", "q", "safety: blocked tag shota", ["shota"], False),
    (18, "smile  long_hair ", "g", None, ["smile", "long_hair"], False),
]  # fmt: skip
EXCLUDED = {c[0]: c[3] for c in CASES}
STORED = {c[0]: c[4] for c in CASES}
HIDDEN = {c[0] for c in CASES if c[5]}


def record(pid, tags, rating, as_list=False) -> dict:
    rec = {"id": pid, "rating": rating, "score": 5, "md5": f"{pid:032x}",
           "created_at": "2022-06-01T00:00:00.000-04:00", "tag_string_artist": "artist_a"}  # fmt: skip
    if as_list:  # gallery-dl's lists, split on the ASCII space as a careless writer would
        rec["tags_general"] = tags.split(" ")
        rec["tags_artist"] = ["artist_a"]
    else:
        rec["tag_string_general"] = tags
    return rec


def write_source(kind: str, folder) -> object:
    recs = [record(pid, tags, rating, kind == "folder-lists") for pid, tags, rating, *_ in CASES]
    if kind == "jsonl":
        path = folder / "dump.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    elif kind == "api-json":
        path = folder / "posts.json"
        path.write_text(json.dumps(recs))
    elif kind == "parquet":
        path = folder / "dump.parquet"
        pq.write_table(pa.Table.from_pylist(recs), path)
    else:
        path = folder / "gallery"
        path.mkdir()
        for r in recs:
            (path / f"danbooru_{r['id']}.png.json").write_text(json.dumps(r))
    return path


def rows(ws, sql, params=()):
    with open_catalog(ws.catalog_path, read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.mark.parametrize("kind", ["jsonl", "api-json", "parquet", "folder", "folder-lists"])
def test_every_source_normalises_tags_and_excludes_hidden_listed_tags(tmp_path, kind):
    ws = init_workspace(tmp_path / "ws")
    ingest(ws, [write_source(kind, tmp_path)])
    got = rows(ws, "SELECT id, excluded, tags_general FROM posts ORDER BY id")
    assert {pid: why for pid, why, _ in got} == EXCLUDED
    assert {pid: tags for pid, _, tags in got} == STORED
    bad = rows(ws, "SELECT post_id, detail FROM problems WHERE reason = 'bad-field' ORDER BY 1")
    assert {pid for pid, _ in bad} == HIDDEN
    details = dict(bad)
    assert details[7] == (
        f"post 7: {'tags_general' if kind == 'folder-lists' else 'tag_string_general'} held "
        "control or invisible characters (U+200B); removed, tags kept"
    )
    assert "(U+0000)" in details[10] and "(U+0009)" in details[2]


def test_no_blocked_post_reaches_captions(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    ingest(ws, [write_source("jsonl", tmp_path)])
    build_captions(ws)
    captioned = [json.loads(line)["id"] for line in ws.captions_path.read_text().splitlines()]
    assert captioned == [pid for pid, why in EXCLUDED.items() if why is None]
    assert "loli" not in ws.captions_path.read_text().lower()


def test_a_catalog_from_before_the_normaliser_is_normalised_and_judged_again(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    with open_catalog(ws.catalog_path) as con:
        con.execute(  # as the old ingest stored them: split on the ASCII space only
            "INSERT INTO posts (id, rating_raw, rating, tags_general) VALUES "
            "(1, 'g', 'g', ['1girl\tloli']), (2, 'g', 'g', ['ｌｏｌｉ']), (3, 'g', 'g', ['smile'])"
        )
        con.execute(
            'INSERT INTO settings VALUES (\'judged_with\', \'{"always": ["loli", "oppai_loli", '
            '"shota", "toddlercon"], "legacy_ratings": false, "unless_general": ["aged_down", '
            '"baby", "child", "female_child", "male_child", "toddler"]}\')'
        )
        assert sync_with_recipe(con, workspace_recipe(ws)) == 2
        got = con.execute("SELECT id, tags_general, excluded FROM posts ORDER BY id").fetchall()
    assert got == [(1, ["1girl", "loli"], LOLI), (2, ["loli"], LOLI), (3, ["smile"], None)]


# --- the final caption is judged again ---------------------------------------------------


def caption_ws(tmp_path, caption: dict):
    ws = init_workspace(tmp_path / "ws", parse_recipe({"caption": caption}))
    (ws.root / "images").mkdir()
    with open_catalog(ws.catalog_path) as con:
        sync_with_recipe(con, workspace_recipe(ws))
        con.execute(
            "INSERT INTO posts (id, md5, score, rating, rating_raw, tags_general) VALUES "
            "(1, 'a', 10, 'g', 'g', ['smile']), (2, 'b', 10, 's', 's', ['smile']), "
            "(3, 'c', 10, 'e', 'e', ['long_hair'])"
        )
        for pid in (1, 2, 3):
            (ws.root / "images" / f"{pid}.png").write_bytes(b"x")
            con.execute(
                "INSERT INTO files VALUES (?, ?, ?, 8, 8, 'png', 1)",
                [pid, f"images/{pid}.png", f"h{pid}"],
            )
    return ws


@pytest.mark.parametrize(
    ("tokens", "verdict"),
    [
        (["sensitive", "ｌｏｌｉ"], "safety: caption has blocked tag loli"),
        (["sensitive", "x, loli"], "safety: caption has blocked tag loli"),  # the separator
        (["lo\u200bli"], "safety: caption has blocked tag loli"),
        (["oppai loli"], "safety: caption has blocked tag oppai_loli"),
        (["female child"], "safety: caption has blocked tag female_child with rating s"),
    ],
)
def test_a_caption_that_shows_a_listed_tag_is_never_written(tmp_path, tokens, verdict):
    ws = caption_ws(tmp_path, {"ratings": {"s": ["sensitive"]}})
    build_captions(ws, sidecars=True)  # an earlier, harmless caption run wrote the sidecar
    sidecar = sidecar_path(ws.root / "images" / "2.png")
    assert sidecar.exists()
    init_workspace(ws.root, parse_recipe({"caption": {"ratings": {"s": tokens}}}), True)
    summary = build_captions(ws, sidecars=True)
    assert (summary.captions, summary.excluded) == (2, 1)
    lines = [json.loads(x) for x in ws.captions_path.read_text().splitlines()]
    assert [x["id"] for x in lines] == [1, 3]
    assert rows(ws, "SELECT post_id FROM captions ORDER BY 1") == [(1,), (3,)]
    assert rows(ws, "SELECT excluded FROM posts WHERE id = 2") == [(verdict,)]
    assert not sidecar.exists()
    assert show_caption(ws, 2)["caption"] is None and show_caption(ws, 2)["excluded"] == verdict
    # the recipe made harmless again: the post is captioned again (its file row was kept)
    init_workspace(ws.root, parse_recipe({"caption": {"ratings": {"s": ["sensitive"]}}}), True)
    summary = build_captions(ws, sidecars=True)
    assert (summary.captions, summary.excluded, summary.with_file) == (3, 0, 3)
    assert rows(ws, "SELECT count(*) FROM posts WHERE excluded IS NOT NULL") == [(0,)]


def test_fast_and_reference_builders_agree_on_the_verdict():
    cfg = parse_recipe(
        {"caption": {"ratings": {"e": ["explicit", "Ｌｏｌｉ"], "q": ["child"], "s": ["x, baby"]},
                     "separator": " | ", "escape_parentheses": True}}
    ).caption  # fmt: skip
    empty = {f"tags_{g}": [] for g in ("artist", "copyright", "character", "meta")}
    posts = [
        {"score": 1, "rating": r, "rating_raw": raw, "pdate": None, **empty, "tags_general": tags}
        for r, raw, tags in [
            ("g", "g", ["smile"]), ("e", "e", ["smile"]), ("q", "q", ["a"]), ("q", "g", ["a"]),
            ("s", "s", ["b"]), ("g", "g", ["loli_(x)", "toddler"]), ("s", "s", ["toddler"]),
            ("g", None, ["a | loli"]), ("g", "g", ["oppai  loli"]), ("g", "g", ["Aged_Down"]),
        ]
    ]  # fmt: skip
    schema = pa.schema(
        [("score", pa.int32()), ("rating", pa.string()), ("rating_raw", pa.string()),
         ("pdate", pa.date32()), *((k, pa.list_(pa.string())) for k in [*empty, "tags_general"])]
    )  # fmt: skip
    table = pa.Table.from_pylist(posts, schema=schema)
    fast = build_caption_arrays(table, cfg, TokenCounter(cfg.separator))
    ref = [build_caption({**p, "date": None}, cfg).blocked for p in posts]
    assert (
        [fast.blocked.get(i) for i in range(len(posts))]
        == ref
        == [
            None,
            "safety: caption has blocked tag loli",
            "safety: caption has blocked tag child with rating q",
            None,  # the filter reads the rating as read: g
            "safety: caption has blocked tag baby with rating s",
            None,
            "safety: caption has blocked tag toddler with rating s",
            "safety: caption has blocked tag loli",
            "safety: caption has blocked tag oppai_loli",
            None,
        ]
    )


@pytest.mark.parametrize(
    ("text", "tags", "hidden"),
    [
        ("a b", ["a", "b"], ""),
        ("", [], ""),
        ("a\u3000b\u00a0c\u2028d\u2029e\u0085f", ["a", "b", "c", "d", "e", "f"], "U+0085"),
        ("a\x00b", ["ab"], "U+0000"),
        ("ｆｕｌｌ ｗｉｄｔｈ", ["full", "width"], ""),
        ("ﬁsh", ["fish"], ""),  # ligature
        ("\u200b\u200c\u200d\ufeff", [], "U+200B U+200C U+200D U+FEFF"),
        ("e\u0301", ["é"], ""),
        ("tag\ud800x", ["tagx"], "U+D800"),  # a lone surrogate
    ],
)
def test_split_tags(text, tags, hidden):
    assert split_tags(text) == (tags, hidden)
    assert normalize_tags(text.split(" ")) == (tags, hidden)


@pytest.mark.parametrize(
    ("tag", "key"),
    [
        ("Long Hair", "long_hair"),
        ("long_hair", "long_hair"),
        ("__long__hair__", "long_hair"),
        ("ＬＯＮＧ\u3000ＨＡＩＲ", "long_hair"),
        ("Pokémon", "pokemon"),
        ("^_^", "^_^"),
        ("İ", "i"),
        ("ß", "ß"),
    ],
)
def test_filter_key(tag, key):
    assert filter_key(tag) == key


def test_reference_caption_check_uses_the_separator():
    cfg = CaptionConfig(separator=" | ")
    post = {"rating": "g", "tags_general": ["a | loli"]}
    assert build_caption(post, cfg).blocked == "safety: caption has blocked tag loli"
    assert build_caption({"rating": "g", "tags_general": ["a_|_b"]}, cfg).blocked is None
