"""Tag analytics: exact Jaccard values against brute force, subsets, tokens, storage, chart."""

from __future__ import annotations

import pytest
from test_tags_data import Post, add_posts, make_catalog, random_posts

from tagtune.core.catalog import open_catalog
from tagtune.core.errors import InputError, WorkspaceError
from tagtune.tags import analytics as tg
from tagtune.tags.chart import write_tags_chart
from tagtune.tags.index import INDEX_FILE, build_index, load_index, save_index

SEEDS = [0, 1, 2, 3]


def brute_rank(sets: dict[str, set[int]], target: set[int], skip=()) -> list[tuple]:
    """(tag, count, intersection, jaccard) best first: Jaccard, intersection, then name."""
    rows = []
    for tag, posts in sets.items():
        inter = len(posts & target)
        if tag in skip or inter == 0:
            continue
        rows.append((tag, len(posts), inter, inter / len(posts | target)))
    return sorted(rows, key=lambda r: (-r[3], -r[2], r[0]))


def as_tuples(stats) -> list[tuple]:
    return [(s.tag, s.count, s.intersection, s.jaccard) for s in stats]


def assert_same(got: list[tuple], want: list[tuple]) -> None:
    assert [g[:3] for g in got] == [w[:3] for w in want]
    assert [g[3] for g in got] == pytest.approx([w[3] for w in want], abs=1e-12)


@pytest.fixture(scope="module", params=SEEDS)
def cat(request, tmp_path_factory):
    """One random catalog per seed, shared by the tests that do not change captions."""
    return make_catalog(tmp_path_factory.mktemp("tags") / "ws", random_posts(request.param))


def token_tags(cat) -> set[str]:
    return {
        t for p in cat.posts for t, g in zip(p.tags, p.groups, strict=True) if g in tg.TOKEN_GROUPS
    }


def test_similar_matches_brute_force(cat):
    sets = cat.sets()
    for tag in ["long hair", "smile", "artist a", "safe"]:
        res = tg.similar_tags(cat.ws, tag, n=1000)
        assert (res.tag, res.count) == (tag, len(sets[tag]))
        assert res.posts == sum(p.excluded is None for p in cat.posts)
        assert_same(as_tuples(res.tags), brute_rank(sets, sets[tag], skip={tag}))


def test_similar_within_where_subset(cat):
    sets = cat.sets(lambda p: p.score >= 25)
    res = tg.similar_tags(cat.ws, "smile", n=1000, where="score >= 25")
    assert res.count == len(sets["smile"])
    assert_same(as_tuples(res.tags), brute_rank(sets, sets["smile"], skip={"smile"}))


def test_suggest_matches_brute_force_and_leaves_out_tokens(cat):
    sets = cat.sets()
    fav = {p.id for p in cat.posts if p.favorite and p.excluded is None}
    tokens = token_tags(cat)
    res = tg.suggest_tags(cat.ws, n=1000, min_count=1)
    assert (res.subset, res.against, res.subset_posts) == ("favorites", "all", len(fav))
    assert_same(as_tuples(res.tags), brute_rank(sets, fav, skip=tokens))
    assert not {s.tag for s in res.tags} & tokens


@pytest.mark.parametrize("min_count", [1, 5, 12, 30])
def test_suggest_min_count_filters_rare_tags(cat, min_count):
    sets = cat.sets()
    fav = {p.id for p in cat.posts if p.favorite and p.excluded is None}
    rare = {t for t, s in sets.items() if len(s) < min_count}
    res = tg.suggest_tags(cat.ws, n=1000, min_count=min_count, store=False)
    assert_same(as_tuples(res.tags), brute_rank(sets, fav, skip=token_tags(cat) | rare))
    assert all(s.count >= min_count for s in res.tags)


def test_suggest_where_subset_against_reference(cat):
    target = {p.id for p in cat.posts if p.excluded is None and p.rating in "gs" and p.score >= 10}
    ref = cat.sets(lambda p: p.score < 100 or p.id in target)
    tokens = token_tags(cat)
    where = "rating in ('g','s') and score >= 10"
    res = tg.suggest_tags(cat.ws, where=where, against="score < 100", n=1000, min_count=1)
    assert (res.subset, res.subset_posts) == (where, len(target))
    assert res.posts == len({i for s in ref.values() for i in s})
    assert_same(as_tuples(res.tags), brute_rank(ref, target, skip=tokens))


def test_top_counts_by_subset_and_group(cat):
    fav = cat.sets(lambda p: p.favorite)
    res = tg.top_tags(cat.ws, subset="favorites", group="general", n=1000)
    want = sorted(
        ((t, len(s)) for t, s in fav.items() if cat.group_of(t) == "general"),
        key=lambda r: (-r[1], r[0]),
    )
    assert [(s.tag, s.count) for s in res.tags] == want
    assert res.posts == sum(p.favorite and p.excluded is None for p in cat.posts)


def test_excluded_posts_never_count(tmp_path):
    posts = [
        Post(1, ["artist a", "smile", "cat"], ["artist", "general", "general"], favorite=True),
        Post(2, ["artist a", "smile"], ["artist", "general"]),
        Post(
            3,
            ["artist a", "smile", "cat", "hat"],
            ["artist", *["general"] * 3],
            favorite=True,
            excluded="blocked tag",
        ),  # fmt: skip
    ]
    cat = make_catalog(tmp_path / "ws", posts)
    top = tg.top_tags(cat.ws)
    assert [(s.tag, s.count) for s in top.tags] == [("artist a", 2), ("smile", 2), ("cat", 1)]
    sim = tg.similar_tags(cat.ws, "cat")
    assert (sim.count, sim.posts) == (1, 2)
    assert [(s.tag, s.intersection, s.jaccard) for s in sim.tags] == [
        ("artist a", 1, 0.5),
        ("smile", 1, 0.5),
    ]
    sug = tg.suggest_tags(cat.ws, min_count=1, store=False)
    assert sug.subset_posts == 1 and "hat" not in [s.tag for s in sug.tags]


def test_token_groups_never_suggested_even_when_perfect(tmp_path):
    groups = ["general", "quality", "rating", "period", "meta"]
    posts = [
        Post(i, ["smile", "masterpiece", "safe", "newest", "highres"], groups, favorite=True)
        for i in range(1, 4)
    ] + [Post(9, ["cat", "worst quality", "nsfw", "oldest", "lowres"], groups)]
    cat = make_catalog(tmp_path / "ws", posts)
    res = tg.suggest_tags(cat.ws, min_count=1)
    assert [(s.tag, s.jaccard) for s in res.tags] == [("smile", 1.0)]
    assert res.prompt == "smile"


def test_duplicate_tag_in_one_caption_counts_once(tmp_path):
    posts = [Post(1, ["smile", "smile", "cat"], ["general"] * 3), Post(2, ["smile"], ["general"])]
    cat = make_catalog(tmp_path / "ws", posts)
    assert [(s.tag, s.count) for s in tg.top_tags(cat.ws).tags] == [("smile", 2), ("cat", 1)]


def test_suggest_stores_ranking_and_replaces_only_its_subset(tmp_path):
    cat = make_catalog(tmp_path / "ws", random_posts(3))
    first = tg.suggest_tags(cat.ws, n=5, min_count=1)
    tg.suggest_tags(cat.ws, subset="all", against="all", n=2, min_count=1)
    with open_catalog(cat.ws.catalog_path) as con:
        stored = tg.recommended_tags(con, "favorites")
        assert len(tg.recommended_tags(con, "all")) == 2
    assert stored == [
        {"rank": i + 1, "tag": s.tag, "jaccard": pytest.approx(s.jaccard), "count": s.count}
        for i, s in enumerate(first.tags)
    ]
    tg.suggest_tags(cat.ws, n=3, min_count=1)
    with open_catalog(cat.ws.catalog_path, read_only=True) as con:
        assert [r["rank"] for r in tg.recommended_tags(con, "favorites")] == [1, 2, 3]
        assert len(tg.recommended_tags(con, "all")) == 2


def test_index_is_cached_and_rebuilt_when_captions_change(tmp_path):
    cat = make_catalog(tmp_path / "ws", random_posts(4, n=20))
    path = cat.ws.cache_dir / INDEX_FILE
    tg.top_tags(cat.ws)
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    tg.top_tags(cat.ws, subset="favorites")
    assert path.stat().st_mtime_ns == stamp  # same captions: the cache is reused
    add_posts(cat, [Post(5000, ["brand new tag"], ["general"])])
    assert tg.similar_tags(cat.ws, "brand new tag").count == 1
    path.write_bytes(b"not an npz")  # a damaged cache is rebuilt, not an error
    assert tg.similar_tags(cat.ws, "brand new tag").count == 1


@pytest.mark.parametrize(
    ("given", "found"),
    [
        ("long hair", "long hair"),
        ("long_hair", "long hair"),
        (" Long_Hair ", "long hair"),
        ("^_^", "^_^"),
        ("fate_(series)", "fate (series)"),
    ],  # fmt: skip
)
def test_tag_accepted_in_caption_or_danbooru_form(tmp_path_factory, given, found):
    posts = [Post(1, ["long hair", "^_^", "fate (series)"], ["general", "general", "copyright"])]
    cat = make_catalog(tmp_path_factory.mktemp("t") / "ws", posts)
    assert tg.similar_tags(cat.ws, given).tag == found


def test_unknown_tag_error_lists_close_matches(tmp_path):
    cat = make_catalog(tmp_path / "ws", random_posts(0, n=20))
    with pytest.raises(InputError) as err:
        tg.similar_tags(cat.ws, "lnog_hair")
    assert err.value.message() == (
        "tag = 'lnog_hair': no caption has this tag; close matches: long hair, short hair"
    )
    with pytest.raises(InputError) as err:
        tg.similar_tags(cat.ws, "zzzzzz")
    assert err.value.message() == "tag = 'zzzzzz': no caption has this tag; no close match"


def test_bad_where_is_a_clear_error(tmp_path):
    cat = make_catalog(tmp_path / "ws", random_posts(0, n=10))
    with pytest.raises(InputError) as err:
        tg.top_tags(cat.ws, where="scor >= 10")
    assert err.value.message().startswith(
        "--where = 'scor >= 10': not a subset condition: column scor is not a subset column "
        "(allowed: columns id, md5, created_at, date, score,"
    )
    with pytest.raises(InputError) as err:  # parsed and allowed, but DuckDB cannot bind it
        tg.top_tags(cat.ws, subset="created_at >= DATE '2021-01-01'")
    assert err.value.message().startswith(
        "--subset = \"created_at >= DATE '2021-01-01'\": invalid subset WHERE clause: "
        "Binder Error: Cannot compare values of type VARCHAR and type DATE"
    )


def test_empty_subset_and_unknown_group_errors(tmp_path):
    cat = make_catalog(tmp_path / "ws", [Post(1, ["smile"], ["general"])])
    with pytest.raises(InputError) as err:
        tg.suggest_tags(cat.ws)
    assert err.value.message() == "subset = 'favorites': no captioned post is in this subset"
    with pytest.raises(InputError) as err:
        tg.top_tags(cat.ws, group="genral")
    assert err.value.message() == (
        "group = 'genral': unknown tag group (allowed: artist, copyright, character, general, "
        "meta, quality, rating, period)"
    )


@pytest.mark.parametrize(
    ("subset", "where", "expr"),
    [
        ("all", None, "all"),
        ("favorites", None, "favorites"),
        ("all", "score > 1", "score > 1"),
        ("favorites", "score > 1", "posts.favorite AND (score > 1)"),
        ("rating = 'g'", "score > 1", "(rating = 'g') AND (score > 1)"),
        ("favorites", " ", "favorites"),
    ],  # fmt: skip
)
def test_subset_expr(subset, where, expr):
    assert tg.subset_expr(subset, where) == expr


def test_prompt_line_escapes_parentheses():
    assert tg.prompt_line(["1girl", "fate (series)", "smile"]) == r"1girl, fate \(series\), smile"


def test_chart_is_a_png(tmp_path):
    cat = make_catalog(tmp_path / "ws", random_posts(5))
    out = tmp_path / "charts" / "tags.png"
    res = write_tags_chart(cat.ws, out, n=10)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert res.bytes == len(data) and len(res.top) == 10
    assert all(g not in tg.TOKEN_GROUPS for _, g, _ in res.top)
    assert [t for t, _ in res.distributions["rating"]] == ["safe", "sensitive", "nsfw", "explicit"]
    assert sum(c for _, c in res.distributions["period"]) == res.posts
    assert not list(out.parent.glob(".*tmp"))  # atomic write left no temporary file


def test_bad_against_and_no_captions_errors(tmp_path):
    cat = make_catalog(tmp_path / "ws", [Post(1, ["smile"], ["general"], favorite=True)])
    with pytest.raises(InputError) as err:
        tg.suggest_tags(cat.ws, against="scroe > 1")
    assert err.value.message().startswith(
        "--against = 'scroe > 1': not a subset condition: column scroe is not a subset column"
    )
    empty = make_catalog(tmp_path / "empty", [])
    with pytest.raises(WorkspaceError) as err:
        tg.top_tags(empty.ws)
    assert err.value.message() == f"{empty.ws.catalog_path}: no captions in the catalog"
    assert err.value.hint == "run `tagtune caption`"


def test_index_round_trips_through_the_cache_file(tmp_path):
    posts = [
        Post(2, ["smile", "blue sky", "ümlaut tag", "fate (series)"], ["general"] * 4),
        Post(1, ["smile", "^_^"], ["general", "general"]),
    ]
    cat = make_catalog(tmp_path / "ws", posts)
    with open_catalog(cat.ws.catalog_path, read_only=True) as con:
        built = build_index(con)
    save_index(built, tmp_path / "i.npz")
    loaded = load_index(tmp_path / "i.npz")
    assert list(loaded.tags) == ["^_^", "blue sky", "fate (series)", "smile", "ümlaut tag"]
    assert list(loaded.post_ids) == [1, 2] and loaded.fingerprint == built.fingerprint
    assert (loaded.X != built.X).nnz == 0 and loaded.X.nnz == 6


@pytest.mark.parametrize("clause", ["1=1) or (1=1", "TRUE) OR (TRUE", "score > 0; DROP TABLE posts",
                                    "score > 0 -- x", "rating = 'g", "(score > 0"])  # fmt: skip
def test_a_subset_clause_cannot_reach_around_the_safety_filter(clause):
    from tagtune.core.catalog import subset_where

    with pytest.raises(InputError, match="not a subset condition"):
        subset_where(clause)
    assert subset_where("rating in ('g', 's') and tags_general[1] = ')'") == (
        "posts.excluded IS NULL AND (((posts.rating IN ('g', 's')) AND "
        "((posts.tags_general[1]) = ')')))"
    )
