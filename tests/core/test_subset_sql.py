"""Subset WHERE clauses are parsed by DuckDB and rendered again from an allow-list, never run as text.

The hostile clauses below were each run through the old text guard (bracket and quote
counting), which let most of them through: DuckDB's `$$...$$`, `$tag$...$tag$` and `E'...'`
strings hid brackets and `;` from it, so a recipe subset could COPY the catalog to a file,
un-exclude blocked posts or drop tables. `_old_text_guard` is that guard, kept here only to
show which cases got past it, and `test_the_old_guard_let_these_do_harm` shows the harm.
"""

from __future__ import annotations

import subprocess
import sys

import duckdb
import pytest

from cli_main import invoke
from tagtune.core.catalog import SCHEMA, check_subset, open_catalog, subset_where
from tagtune.core.errors import InputError
from tagtune.core.subsets import SUBSET_COLUMNS, render_clause
from tagtune.recipe.workspace import init_workspace

OUT = "{out}"  # replaced by a path under tmp_path: a file the clause tries to create

# (clause, passed the old text guard, what it tried)
HOSTILE = [
    ("TRUE AND $$'$$ IS NOT NULL); COPY (SELECT * FROM posts) TO '{out}'; "
     "SELECT 1 WHERE ($$'$$ IS NOT NULL", True, "COPY the catalog to a file ($$ string)"),
    ("TRUE AND $q$'$q$ IS NOT NULL); UPDATE posts SET excluded = NULL; "
     "SELECT 1 WHERE ($q$'$q$ IS NOT NULL", True, "un-exclude blocked posts ($tag$ string)"),
    ("rating = E'\\'' ); DROP TABLE captions; SELECT ( E'\\''", True, "DROP TABLE (E'' string)"),
    ("$$'$$ IS NULL OR TRUE) OR TRUE -- '", True, "comment eats the bracket: excluded posts in"),
    ("$$'$$ IS NULL) OR TRUE OR ($$'$$ IS NULL", True, "bracket escape: excluded posts in"),
    ("TRUE AND $$'$$ IS NOT NULL); ATTACH '{out}' AS x; SELECT 1 WHERE ($$'$$ IS NOT NULL",
     True, "ATTACH creates a file"),
    ("id IN (SELECT post_id FROM files)", True, "subquery over another table"),
    ("EXISTS (SELECT * FROM read_csv('{out}'))", True, "read_csv in a subquery"),
    ("(SELECT count(*) FROM read_text('/etc/hostname')) > 0", True, "read any file"),
    ("read_csv('{out}') IS NULL", True, "table function"),
    ("(SELECT * FROM query('SELECT 1')) = 1", True, "query() table function"),
    ("getenv('HOME') <> ''", True, "environment"),
    ("current_setting('threads') > 0", True, "settings"),
    ("(SELECT count(*) FROM pragma_database_list()) > 0", True, "pragma table function"),
    ("pragma_version() IS NULL", True, "pragma call"),
    ("EXISTS (FROM glob('/*'))", True, "glob the filesystem"),
    ("excluded IS NOT NULL", True, "the safety verdict column"),
    ("raw IS NOT NULL", True, "raw JSON column"),
    ("files.path LIKE '/%'", True, "another table's column"),
    ("COLUMNS(*) IS NULL", True, "star expression"),
    ("score::HUGEINT > 0", True, "cast to an odd type"),
    ("CAST(rating AS STRUCT(a INT)) IS NULL", True, "cast to a struct"),
    ("list_filter(tags_general, x -> x = 'a') <> []", True, "lambda"),
    ("main.lower(rating) = 'g'", True, "qualified function"),
    ("CASE WHEN favorite THEN TRUE END", True, "CASE"),
    ("$1 = 1", True, "parameter"),
    ("rating = 'g' ORDER BY 1", True, "ORDER BY after the condition"),
    ("TRUE UNION SELECT 1", True, "UNION"),
    ("score > 0 /* ' */", False, "block comment"),
    ("score > 0 -- x", False, "line comment"),
    ("1=1) OR (1=1", False, "bracket escape"),
    ("TRUE) OR (TRUE", False, "bracket escape"),
    ("score > 0; DROP TABLE posts", False, "second statement"),
    ("TRUE;", False, "trailing ;"),
]  # fmt: skip

# (clause, ids it selects from the catalog below, excluded post 9 never among them)
LEGIT = [
    ("score >= 100 AND rating IN ('g','s')", [1, 2]),
    ("favorite", [1, 3]),
    ("date >= DATE '2021-01-01'", [1, 4, 5]),
    ("list_contains(tags_general, 'smile')", [1, 2, 4]),
    ("posts.id > 4", [5, 6]),
    ("rating in ('g', 's') and tags_general[1] = ')'", [6]),
    ("score >= 10", [1, 2, 3, 4]),
    ("rating = 's'", [2]),
    ("NOT favorite AND score BETWEEN 0 AND 120", [2, 4]),
    ("md5 LIKE 'ab%' OR file_ext ILIKE 'PNG'", [1, 5]),
    ("parent_id IS NULL AND id <> 6", [1, 2, 3, 4, 5]),
    ("len(tags_general) >= 2", [1, 2, 4]),
    ("year(date) = 2020 OR date_part('year', date) = 2022", [2, 3, 5]),
    ("list_has_any(tags_general, ['blue_sky', 'hat'])", [1, 4]),
    ("image_width * image_height >= 1000000", [1, 2]),
    ("score > -5 AND Score < 50", [3, 4, 5]),
    ("created_at >= '2021-06'", [5]),
    ("favorite IS TRUE", [1, 3]),
    ("rating NOT IN ('e', 'q')", [1, 2, 5, 6]),
    ("lower(rating) = upper('g') OR abs(score) = 4", [5]),
]


def _old_text_guard(clause: str) -> bool:
    """True where the replaced guard accepted the clause: brackets balanced outside ' and "
    quotes, no `;`, `--` or `/*` there. Kept to show what it let through."""
    depth, quote, i = 0, "", 0
    while i < len(clause):
        ch = clause[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
        elif ch == ";" or clause.startswith(("--", "/*"), i):
            return False
        i += 1
    return depth == 0 and not quote


POSTS = [  # id, score, rating, date, favorite, general tags, md5, ext, w, h, parent, excluded
    (1, 150, "g", "2021-03-01", True, ["smile", "blue_sky"], "ab12", "png", 1024, 1024, None, None),
    (2, 100, "s", "2020-05-05", False, ["smile", "cat"], "cd34", "jpg", 2000, 1000, None, None),
    (3, 20, "q", "2020-01-01", True, ["dog"], "ef56", "jpg", 500, 500, None, None),
    (4, 10, "e", "2021-01-01", False, ["smile", "hat"], None, "jpg", 800, 600, None, None),
    (5, -4, "g", "2022-07-07", False, [], "ab78", "PNG", 640, 480, None, None),
    (6, None, "g", None, None, [")"], None, None, None, None, 1, None),
    (9, 500, "g", "2021-03-01", True, ["smile", "blue_sky"], "ab99", "png", 2048, 2048, None,
     "safety: blocked tag loli"),
]  # fmt: skip


@pytest.fixture
def ws(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    with open_catalog(ws.catalog_path) as con:
        for p in POSTS:
            con.execute(
                "INSERT INTO posts (id, score, rating, rating_raw, date, created_at, favorite, "
                "tags_general, md5, file_ext, image_width, image_height, parent_id, excluded) "
                "VALUES (?, ?, ?, ?, ?::DATE, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [p[0], p[1], p[2], p[2], p[3], p[3], p[4], p[5], *p[6:]],
            )
            con.execute(
                "INSERT INTO captions (post_id, caption, tags, groups) VALUES (?, 'x', ['x'], "
                "['general'])",
                [p[0]],
            )
    return ws


def snapshot(ws) -> tuple:
    """Everything a clause could change: tables, posts (with verdicts), captions."""
    with open_catalog(ws.catalog_path, read_only=True) as con:
        tables = con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()
        posts = con.execute("SELECT id, excluded FROM posts ORDER BY id").fetchall()
        caps = con.execute("SELECT post_id FROM captions ORDER BY 1").fetchall()
    return tables, posts, caps


@pytest.mark.parametrize(("clause", "old_passed", "what"), HOSTILE, ids=[h[2] for h in HOSTILE])
def test_hostile_clause_is_refused_and_changes_nothing(ws, tmp_path, clause, old_passed, what):
    out = tmp_path / "stolen.csv"
    text = clause.replace(OUT, str(out))
    assert _old_text_guard(text) is old_passed  # what the replaced guard did with it
    before = snapshot(ws)
    with open_catalog(ws.catalog_path) as con, pytest.raises(InputError) as err:
        check_subset(con, text, "train.stages[0].subset")
    msg = err.value.message()
    assert "\n" not in msg
    assert msg.startswith(f"train.stages[0].subset = {text!r}: not a subset condition: ")
    assert msg.endswith(f"(allowed: columns {', '.join(SUBSET_COLUMNS)}; functions "
                        "list_contains, list_has_any, list_has_all, len, lower, upper, year, "
                        "month, date_part, abs; comparisons, AND/OR/NOT, IN (values), BETWEEN, "
                        "LIKE/ILIKE, IS [NOT] NULL, literals, casts)")  # fmt: skip
    assert not out.exists()
    assert snapshot(ws) == before


@pytest.mark.parametrize(
    ("clause", "names"),
    [
        ("read_csv('x') IS NULL", "function read_csv is not allowed"),
        ("getenv('HOME') <> ''", "function getenv is not allowed"),
        ("excluded IS NULL", "column excluded is not a subset column"),
        ("files.path = ''", "column files.path is not a subset column"),
        ("id IN (SELECT 1)", "a subquery is not allowed"),
        ("id IN (1, score)", "IN takes a list of values, not column ref"),
        ("score::HUGEINT > 0", "cast to HUGEINT"),
        ("$$x$$ = 'x'", "string at character 1 is not a plain '...' string"),
        ("rating = E'g'", "string at character 10 is not a plain '...' string"),
        ("score > 0 -- c", "comment at character 11"),
        ("TRUE; SELECT 1", "';' (one condition only, no second statement)"),
        ("1=1) OR (1=1", 'not one SQL condition (syntax error at or near ")")'),
        ("score > 0 LIMIT 1", "more than one condition (ORDER BY, LIMIT, GROUP BY, UNION, ...)"),
        ("NOT " * 80 + "TRUE", "nested more than 64 levels"),
        ("x" * 10_001, "longer than 10,000 characters"),
    ],
)
def test_refusal_names_the_offending_part(clause, names):
    with pytest.raises(InputError) as err:
        subset_where(clause, "--where")
    assert err.value.reason == f"not a subset condition: {names}"
    assert err.value.field == "--where" and err.value.value == clause


@pytest.mark.parametrize(("clause", "ids"), LEGIT)
def test_legitimate_clause_selects_the_same_rows_as_its_text(ws, clause, ids):
    with open_catalog(ws.catalog_path, read_only=True) as con:
        where = check_subset(con, clause)
        got = [
            r[0] for r in con.execute(f"SELECT id FROM posts WHERE {where} ORDER BY id").fetchall()
        ]
        as_text = con.execute(  # the user's own text, as DuckDB reads it (safe here: known cases)
            f"SELECT id FROM posts WHERE posts.excluded IS NULL AND ({clause}) ORDER BY id"
        ).fetchall()
    assert got == [r[0] for r in as_text] == ids


def test_the_exclusion_stays_outside_the_users_expression():
    where = subset_where("rating = 'g' OR TRUE")
    assert where == "posts.excluded IS NULL AND (((posts.rating = 'g') OR TRUE))"
    assert render_clause("score>1 AND rating='it''s'") == (
        "((posts.score > 1) AND (posts.rating = 'it''s'))"
    )
    assert subset_where("all") == "posts.excluded IS NULL AND (TRUE)"
    assert subset_where("favorites") == "posts.excluded IS NULL AND (posts.favorite)"


@pytest.mark.parametrize("clause", [h[0] for h in HOSTILE[:5]], ids=[h[2] for h in HOSTILE[:5]])
def test_the_old_guard_let_these_do_harm(tmp_path, clause):
    """The replaced code pasted the clause into `posts.excluded IS NULL AND (...)` and ran it:
    each of these changed the catalog, wrote a file or selected an excluded post."""
    out = tmp_path / "stolen.csv"
    text = clause.replace(OUT, str(out))
    con = duckdb.connect()
    con.execute(SCHEMA)
    con.execute("INSERT INTO posts (id, excluded) VALUES (1, NULL), (2, 'safety: blocked tag')")
    con.execute("INSERT INTO captions (post_id, caption, tags, groups) VALUES (1, 'a', [], [])")
    assert _old_text_guard(text)
    try:
        rows = con.execute(f"SELECT id FROM posts WHERE posts.excluded IS NULL AND ({text})")
        selected = {r[0] for r in rows.fetchall()}
    except duckdb.Error:
        selected = set()
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    excluded = con.execute("SELECT count(*) FROM posts WHERE excluded IS NOT NULL").fetchone()[0]
    assert out.exists() or excluded == 0 or "captions" not in tables or 2 in selected


def test_tags_where_through_the_command(ws, tmp_path):
    out = tmp_path / "stolen.csv"
    clause = HOSTILE[0][0].replace(OUT, str(out))
    before = snapshot(ws)
    proc = subprocess.run(
        [sys.executable, "-m", "tagtune.cli.main", "tags", str(ws.root), "top", "--where", clause],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1
    assert lines[0].startswith(f"error: --where = {clause!r}: not a subset condition: string at")
    assert "Traceback" not in proc.stderr
    assert not out.exists() and snapshot(ws) == before


def test_train_dry_run_with_a_hostile_recipe_subset(tmp_path):
    from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe

    out = tmp_path / "stolen.csv"
    clause = HOSTILE[0][0].replace(OUT, str(out))
    recipe = tiny_train_recipe()
    recipe.train.stages[0].subset = clause
    ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=2)
    proc = subprocess.run(
        [sys.executable, "-m", "tagtune.cli.main", "train", str(ws.root), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    refused = [ln for ln in lines if f"train.stages[0].subset = {clause!r}" in ln]
    assert len(refused) == 1 and refused[0].startswith(f"error: {ws.recipe_path}: ")
    assert "stage 'main'" in refused[0] and "not a subset condition: string at" in refused[0]
    assert not out.exists()
    res = invoke("train", ws.root, "--dry-run")  # same, through the test runner
    assert res.code == 2 and not out.exists()
