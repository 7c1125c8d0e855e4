"""A subset's SQL WHERE clause, parsed by DuckDB's own parser and accepted only when harmless.

A recipe `subset`, `tags --subset/--where/--against` are SQL conditions over the `posts`
table, and a recipe may come from someone else. Filtering the text cannot tell what DuckDB
will read (`$$...$$` strings hide brackets and `;`), so the clause is parsed by the same
parser that would run it (`json_serialize_sql` gives DuckDB's parse tree as JSON, in the
form DuckDB 2 writes; hence `duckdb>=2.0`): it must
be exactly `SELECT 1 FROM posts WHERE <one expression>`, the expression is walked against an
allow-list of node kinds, columns and functions, and the SQL that runs is rendered from the
tree here, never the user's text. Callers put the safety exclusion outside it
(`catalog.subset_where`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from tagtune.core.errors import InputError

SUBSET_COLUMNS: tuple[str, ...] = (
    "id",
    "md5",
    "created_at",
    "date",
    "score",
    "fav_count",
    "rating",
    "rating_raw",
    "file_ext",
    "image_width",
    "image_height",
    "tags_artist",
    "tags_copyright",
    "tags_character",
    "tags_general",
    "tags_meta",
    "parent_id",
    "is_deleted",
    "favorite",
    "origin",
    "folder",
    "concept",
    "repeats",
)
"""The `posts` columns a subset may read (not `excluded`, `raw`, `source` or `ingested_at`:
the safety verdict is applied outside the clause; raw JSON and paths are not subset data).
`origin` ('danbooru', 'kohya-folder', 'dataset-toml'), `folder` (a caption-file image's folder
name, `10_mychar`), `concept` (`mychar`) and `repeats` select by where posts came from:
`origin = 'kohya-folder' AND folder = '10_mychar'`."""

SUBSET_FUNCTIONS: tuple[str, ...] = (
    "list_contains",
    "list_has_any",
    "list_has_all",
    "len",
    "lower",
    "upper",
    "year",
    "month",
    "date_part",
    "abs",
)
"""Named scalar functions a subset may call (list literals `['a', 'b']` are allowed too)."""

CAST_TYPES: tuple[str, ...] = (
    "DATE",
    "TIMESTAMP",
    "INTEGER",
    "BIGINT",
    "DOUBLE",
    "VARCHAR",
    "BOOLEAN",
)
"""Types of `CAST(x AS T)`, `x::T` and typed literals such as `DATE '2021-01-01'`."""

MAX_CLAUSE_CHARS = 10_000
MAX_DEPTH = 64

_COMPARE = {
    "COMPARE_EQUAL": "=",
    "COMPARE_NOTEQUAL": "<>",
    "COMPARE_LESSTHAN": "<",
    "COMPARE_GREATERTHAN": ">",
    "COMPARE_LESSTHANOREQUALTO": "<=",
    "COMPARE_GREATERTHANOREQUALTO": ">=",
    "COMPARE_DISTINCT_FROM": "IS DISTINCT FROM",
    "COMPARE_NOT_DISTINCT_FROM": "IS NOT DISTINCT FROM",
}
_OPERATORS = {  # DuckDB's names of infix operators -> SQL
    "~~": "LIKE",
    "!~~": "NOT LIKE",
    "~~*": "ILIKE",
    "!~~*": "NOT ILIKE",
    "+": "+",
    "-": "-",
    "*": "*",
    "/": "/",
    "%": "%",
}
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
SUBSET_ALLOWED = (
    f"columns {', '.join(SUBSET_COLUMNS)}; functions {', '.join(SUBSET_FUNCTIONS)}; "
    "comparisons, AND/OR/NOT, IN (values), BETWEEN, LIKE/ILIKE, IS [NOT] NULL, literals, casts"
)
_ALLOWED = SUBSET_ALLOWED
_SHAPE = "more than one condition (ORDER BY, LIMIT, GROUP BY, UNION, ...)"
_LOCK = threading.Lock()
_PARSER: list[duckdb.DuckDBPyConnection] = []


def stage_field(stages: Sequence[Any], stage: Any) -> str:
    """The recipe key of a stage's subset (`train.stages[1].subset`), to name it in errors."""
    for same in (lambda a, b: a is b, lambda a, b: a == b):
        for i, st in enumerate(stages):
            if same(st, stage):
                return f"train.stages[{i}].subset"
    return f"train.stages[{getattr(stage, 'name', '?')}].subset"


@dataclass(frozen=True)
class SubsetOrigin:
    """Where a subset clause came from, for its errors: the recipe key (`field`), the recipe
    file and the stage (None for a flag such as `--where`)."""

    field: str
    file: str | Path | None = None
    stage: str | None = None


def stage_origin(stages: Sequence[Any], stage: Any, file: str | Path | None) -> SubsetOrigin:
    """A stage's subset origin: its recipe key (`stage_field`), the recipe file, its name."""
    return SubsetOrigin(stage_field(stages, stage), file, getattr(stage, "name", None))


class _Refused(Exception):
    """What in the clause is not allowed (the InputError's reason)."""


def render_clause(clause: str, field: str = "subset") -> str:
    """The clause as SQL rendered from DuckDB's parse tree, bracketed, or an InputError.

    Accepts one boolean expression over `SUBSET_COLUMNS` (as `posts.<column>` in the result,
    so it means the same next to joined tables) built from comparisons, AND/OR/NOT, IN over
    value lists, BETWEEN, LIKE/ILIKE, IS [NOT] NULL, literals, casts to `CAST_TYPES` and
    `SUBSET_FUNCTIONS`. `field` names where the clause came from (a recipe key or a flag).
    """
    try:
        if len(clause) > MAX_CLAUSE_CHARS:
            raise _Refused(f"longer than {MAX_CLAUSE_CHARS:,} characters")
        _check_tokens(clause)
        statement = _statement(clause)
        sql = _render(statement["node"].get("where_clause"), 0)
        _check_shape(statement)
        return sql
    except _Refused as exc:
        raise InputError(
            f"not a subset condition: {exc}", field=field, value=clause, allowed=_ALLOWED
        ) from None


def _check_tokens(clause: str) -> None:
    """Refuse what the parse tree no longer shows: comments, `;`, strings not in '...'."""
    try:
        tokens = duckdb.tokenize(clause)
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure is a refusal
        raise _Refused(f"cannot be read as SQL ({str(exc).splitlines()[0]})") from None
    ends = [pos for pos, _ in tokens[1:]] + [len(clause)] if tokens else []
    for (pos, kind), end in zip(tokens, ends, strict=True):
        name = getattr(kind, "name", str(kind))
        if name == "comment":
            raise _Refused(f"comment at character {pos + 1}")
        if name == "string_const" and not clause.startswith("'", pos):
            raise _Refused(f"string at character {pos + 1} is not a plain '...' string")
        if name == "operator" and ";" in clause[pos:end]:
            raise _Refused("';' (one condition only, no second statement)")


def _parser() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection used only to parse (nothing is attached to it)."""
    if not _PARSER:
        _PARSER.append(duckdb.connect(":memory:"))
    return _PARSER[0]


def _serialize(sql: str) -> dict[str, Any]:
    with _LOCK:
        text = _parser().execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()[0][0]
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _Refused("nested too deeply") from None


def _shape(tree: dict[str, Any]) -> Any:
    """A statement without positions and its WHERE: what must equal the template's."""
    if isinstance(tree, dict):
        return {
            k: _shape(v)
            for k, v in tree.items()
            if k not in ("query_location", "query_location_length", "where_clause")
        }
    if isinstance(tree, list):
        return [_shape(v) for v in tree]
    return tree


_TEMPLATE: list[Any] = []


def _statement(clause: str) -> dict[str, Any]:
    """DuckDB's parse tree of `SELECT 1 FROM posts WHERE <clause>`: exactly one statement."""
    tree = _serialize(f"SELECT 1 FROM posts WHERE {clause}")
    if tree.get("error"):
        msg = str(tree.get("error_message") or "parse error").splitlines()[0]
        if "Only SELECT" in msg:
            msg = "it holds another statement"
        raise _Refused(f"not one SQL condition ({msg})")
    statements = tree.get("statements") or []
    if len(statements) != 1 or not isinstance(statements[0].get("node"), dict):
        raise _Refused("not one SQL condition (it holds another statement)")
    if statements[0]["node"].get("type") != "SELECT_NODE":
        raise _Refused(_SHAPE)
    return statements[0]


def _check_shape(statement: dict[str, Any]) -> None:
    """The statement must be the template but for its WHERE: no ORDER BY, LIMIT, UNION..."""
    if not _TEMPLATE:
        _TEMPLATE.append(_shape(_statement("TRUE")))
    if _shape(statement) != _TEMPLATE[0]:
        raise _Refused(_SHAPE)


def _render(node: Any, depth: int) -> str:
    """SQL for one allowed node of the parse tree (raises _Refused for anything else)."""
    if depth > MAX_DEPTH:
        raise _Refused(f"nested more than {MAX_DEPTH} levels")
    if not isinstance(node, dict):
        raise _Refused("unreadable parse tree")
    cls, kind = node.get("class"), node.get("type")
    sub = depth + 1
    if cls == "CONJUNCTION" and kind in ("CONJUNCTION_AND", "CONJUNCTION_OR"):
        joiner = " AND " if kind == "CONJUNCTION_AND" else " OR "
        return "(" + joiner.join(_render(c, sub) for c in _children(node, 2)) + ")"
    if cls == "COMPARISON" and kind in _COMPARE:
        return (
            f"({_render(node.get('left'), sub)} {_COMPARE[kind]} {_render(node.get('right'), sub)})"
        )
    if cls == "BETWEEN":
        x, lo, hi = (_render(node.get(k), sub) for k in ("input", "lower", "upper"))
        return f"({x} BETWEEN {lo} AND {hi})"
    if cls == "OPERATOR":
        return _operator(node, kind, sub)
    if cls == "FUNCTION":
        return _function(node, sub)
    if cls == "CONSTANT":
        return _literal(node)
    if cls == "CAST":
        return _cast(node, sub)
    if cls == "COLUMN_REF":
        return _column(node)
    raise _Refused(f"{_describe(node)} is not allowed")


def _children(node: dict[str, Any], at_least: int) -> list[Any]:
    children = node.get("children")
    if not isinstance(children, list) or len(children) < at_least:
        raise _Refused(f"{_describe(node)} is not allowed")
    return children


def _operator(node: dict[str, Any], kind: Any, depth: int) -> str:
    if kind == "OPERATOR_NOT":
        (child,) = _children(node, 1)[:1]
        return f"(NOT {_render(child, depth)})"
    if kind in ("OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL"):
        test = "IS NULL" if kind == "OPERATOR_IS_NULL" else "IS NOT NULL"
        return f"({_render(_children(node, 1)[0], depth)} {test})"
    if kind in ("COMPARE_IN", "COMPARE_NOT_IN"):
        first, *values = _children(node, 2)
        for v in values:
            if not _is_value(v):
                raise _Refused(f"IN takes a list of values, not {_describe(v)}")
        test = "IN" if kind == "COMPARE_IN" else "NOT IN"
        listed = ", ".join(_render(v, depth) for v in values)
        return f"({_render(first, depth)} {test} ({listed}))"
    if kind == "ARRAY_EXTRACT":
        children = _children(node, 2)
        if len(children) != 2:
            raise _Refused(f"{_describe(node)} is not allowed")
        return f"({_render(children[0], depth)}[{_render(children[1], depth)}])"
    raise _Refused(f"{_describe(node)} is not allowed")


def _is_value(node: Any) -> bool:
    """A literal, or a typed literal (`DATE '2021-01-01'`)."""
    if not isinstance(node, dict):
        return False
    if node.get("class") == "CAST":
        return _is_value(node.get("child"))
    return node.get("class") == "CONSTANT"


def _function(node: dict[str, Any], depth: int) -> str:
    name = node.get("function_name")
    args = node.get("arguments")
    plain = (
        not node.get("schema")
        and not node.get("catalog")
        and node.get("filter") is None
        and not node.get("distinct")
        and not node.get("export_state")
        and not (node.get("order_bys") or {}).get("orders")
        and isinstance(args, list)
        and all(isinstance(a, dict) and not a.get("name") for a in args)
    )
    shown = name if isinstance(name, str) else "?"
    if not plain:
        raise _Refused(f"function {shown} (qualified, named arguments, FILTER or ORDER BY)")
    exprs = [a.get("expression") for a in args]
    if name in _OPERATORS and node.get("is_operator"):
        op = _OPERATORS[name]
        if len(exprs) == 1 and op == "-":
            return f"(- {_render(exprs[0], depth)})"
        if len(exprs) != 2:
            raise _Refused(f"operator {op} with {len(exprs)} operands")
        return f"({_render(exprs[0], depth)} {op} {_render(exprs[1], depth)})"
    if name == "list_value" and not node.get("is_operator"):
        if not all(_is_value(e) for e in exprs):
            raise _Refused("a list literal holds only values")
        return "[" + ", ".join(_render(e, depth) for e in exprs) + "]"
    if isinstance(name, str) and name.lower() in SUBSET_FUNCTIONS and not node.get("is_operator"):
        return f"{name.lower()}({', '.join(_render(e, depth) for e in exprs)})"
    raise _Refused(f"function {shown} is not allowed")


def _literal(node: dict[str, Any]) -> str:
    lit = node.get("literal")
    if not isinstance(lit, dict):
        raise _Refused("unreadable literal")
    kind, text = lit.get("kind"), lit.get("text")
    if not isinstance(text, str):
        raise _Refused("unreadable literal")
    if kind == "STRING":
        return "'" + text.replace("'", "''") + "'"
    if kind in ("INTEGER", "NUMERIC") and _NUMBER.fullmatch(text):
        return text
    if kind == "BOOLEAN" and text.lower() in ("true", "false"):
        return text.upper()
    if kind == "NULL_LITERAL":
        return "NULL"
    raise _Refused(f"literal {text!r} of kind {kind}")


def _cast(node: dict[str, Any], depth: int) -> str:
    t = node.get("type_expr") or {}
    name = t.get("type_name")
    simple = not t.get("children") and not t.get("catalog") and not t.get("schema")
    if not (isinstance(name, str) and name.upper() in CAST_TYPES and simple):
        raise _Refused(f"cast to {name if isinstance(name, str) else '?'}")
    func = "TRY_CAST" if node.get("try_cast") else "CAST"
    return f"{func}({_render(node.get('child'), depth)} AS {name.upper()})"


def _column(node: dict[str, Any]) -> str:
    names = node.get("column_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _Refused("unreadable column reference")
    if len(names) == 2 and names[0].lower() == "posts":
        names = names[1:]
    if len(names) != 1 or names[0].lower() not in SUBSET_COLUMNS:
        raise _Refused(f"column {'.'.join(names)} is not a subset column")
    return f"posts.{names[0].lower()}"


def _describe(node: Any) -> str:
    if not isinstance(node, dict):
        return "an unreadable node"
    kind = str(node.get("type") or node.get("class") or "?")
    words = {
        "SUBQUERY": "a subquery",
        "STAR": "*",
        "COLUMNS": "COLUMNS(...)",
        "LAMBDA": "a lambda",
        "CASE_EXPR": "CASE",
        "VALUE_PARAMETER": "a parameter",
        "COLLATE": "COLLATE",
        "WINDOW_AGGREGATE": "a window function",
    }
    return words.get(kind, kind.lower().replace("_", " "))
