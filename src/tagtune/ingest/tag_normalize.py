"""One tag normaliser for every source of Danbooru tags: sidecars, API JSON, dumps, caption files.

A tag string is read the way a text encoder would read it, so that no spelling hides a tag
from the safety filter:

- Unicode NFKC: full-width forms, ligatures, styled and circled letters become plain ones;
- every Unicode whitespace character separates tags (spaces of every width, no-break
  spaces, tab, newline, U+2028/U+2029), not only the ASCII space;
- control characters (Cc, NUL included), invisible format characters (Cf: zero-width
  space/joiner, BOM, bidi marks), lone surrogates and the other default-ignorable code
  points are removed; the string is reported (`found`) so ingest can record a `bad-field`
  problem, and its tags are kept. Given the filter's keys, a listed tag that the other
  reading of those characters shows (`1girl<NUL>loli`) is kept as a tag too.

A tidy string (`TIDY_PATTERN`: printable ASCII, single spaces) is already normal and is just
split. Inside DuckDB (`split_tags_sql`) tidy strings are split by DuckDB itself and only the
rest goes through `split_tags` (a Python function registered by `sql_functions`), so a clean
million-post dump never calls Python per post.

`filter_key` is the form the safety filter compares: a tag (whitespace read as underscores,
as in a caption) NFKC-normalised, lower case, without combining marks, with single
underscores and none at either end.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import unicodedata
from collections.abc import Collection, Iterable, Iterator
from typing import Any

_TAG = r"[!-^`-~]+(?:_[!-^`-~]+)*"
TIDY_PATTERN = f"{_TAG}(?: {_TAG})*"
"""Tag strings that need nothing but splitting on the space: printable ASCII tags, single
spaces between them, underscores single and inside a tag (so a tag's `filter_key` is its
lower case)."""
_TIDY = re.compile(TIDY_PATTERN)
_ASCII_TEXT = re.compile(r"[ -~]*")
_UNDERSCORES = re.compile(r"_+")

TAG_RULES = 2
"""Version of these rules (and of the filter form): a catalog judged under an older one is
normalised and judged again (ingest's `sync_with_recipe`)."""

_REGISTERED = itertools.count(1)

_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
"""Unicode's Default_Ignorable_Code_Point ranges: drawn as nothing."""


@functools.cache
def _hidden() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(every hidden character, the hidden characters that are not whitespace).

    Hidden: Cc, Cf, Cs and default-ignorable code points. Whitespace among them (tab,
    newline, U+001C..U+001F, U+0085) separates tags; the others are removed. Built on first
    use (a pass over the code points, about 0.1 s).
    """
    points = set(range(0x00, 0x20)) | set(range(0x7F, 0xA0)) | set(range(0xD800, 0xE000))
    points |= {c for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"}
    for lo, hi in _DEFAULT_IGNORABLE:
        points |= set(range(lo, hi + 1))
    removed = {c for c in points if not chr(c).isspace()}
    return _char_class(points), _char_class(removed)


def _char_class(points: set[int]) -> re.Pattern[str]:
    ranges, run = [], []
    for c in sorted(points):
        if run and c == run[-1] + 1:
            run.append(c)
        else:
            if run:
                ranges.append((run[0], run[-1]))
            run = [c]
    if run:
        ranges.append((run[0], run[-1]))
    body = "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)
    return re.compile(f"[{body}]")


def _swap(match: re.Match[str]) -> str:
    return "" if match.group().isspace() else " "


def clean_text(text: str, swap: bool = False) -> tuple[str, str]:
    """(text NFKC-normalised without hidden characters, the hidden ones found as `U+XXXX`s).

    Whitespace is kept as it is; callers decide whether it separates tags or is an
    underscore. `swap` reads the hidden characters the other way: the invisible ones as
    spaces, the control whitespace (tab, newline...) as nothing.
    """
    hidden, removed = _hidden()
    found = sorted(set(hidden.findall(text)))
    t = hidden.sub(_swap, text) if swap else removed.sub("", text)
    t = unicodedata.normalize("NFKC", t)
    if not t.isascii():  # NFKC maps a few characters to ignorable ones (U+FFA0 -> U+1160)
        t = removed.sub(" " if swap else "", t)
    return t, " ".join(f"U+{ord(c):04X}" for c in found[:8]) + (" ..." if len(found) > 8 else "")


def split_tags(text: str | None, blocked: Collection[str] = ()) -> tuple[list[str], str]:
    """A Danbooru tag string as its tags, and the hidden characters it held ("" if none).

    Every kind of whitespace separates tags; see the module notes for the rest. A string
    with hidden characters reads two ways: the tags returned (`lo<ZWSP>li` -> `loli`,
    `1girl<TAB>loli` -> `1girl`, `loli`) or the other way round (`1girl<NUL>loli` ->
    `1girl`, `loli`; `lo<TAB>li` -> `loli`). `blocked` (safety filter keys): a tag of the
    second reading whose `filter_key` is listed is added too, so neither reading hides a
    listed tag.
    """
    if not text:
        return [], ""
    if _TIDY.fullmatch(text):
        return text.split(" "), ""
    cleaned, found = clean_text(text)
    tags = cleaned.split()
    if found and blocked:
        broken, _ = clean_text(text, " ")
        tags += [
            t for t in dict.fromkeys(broken.split()) if t not in tags and filter_key(t) in blocked
        ]
    return tags, found


def normalize_tags(values: Iterable[Any], blocked: Collection[str] = ()) -> tuple[list[str], str]:
    """A list of tags (gallery-dl's `tags_general`, a caption file's tags) as normal tags.

    Whitespace inside an element separates tags as in a tag string. Returns the tags and
    the hidden characters found; `blocked` as for `split_tags`.
    """
    return split_tags(" ".join(str(v) for v in values if v is not None), blocked)


def filter_key(tag: str) -> str:
    """The form the safety filter compares: `"Ｏｐｐａｉ  Lòli_"` -> `"oppai_loli"`.

    NFKC without hidden characters, whitespace runs as one underscore (a caption writes
    `oppai loli`), lower case letter by letter, combining marks removed, underscore runs
    as one, none at either end. Its SQL twin for stored tags is `filter_key_sql`.
    """
    if _ASCII_TEXT.fullmatch(tag):  # printable ASCII: NFKC and marks change nothing
        t = "_".join(tag.lower().split()) if " " in tag else tag.lower()
    else:
        cleaned, _ = clean_text(tag)
        t = "".join(c.lower() for c in "_".join(cleaned.split()))
        if not t.isascii():
            bare = (
                c
                for c in unicodedata.normalize("NFD", t)
                if not unicodedata.category(c).startswith("M")
            )
            t = unicodedata.normalize("NFC", "".join(bare))
    if "__" in t or t.startswith("_") or t.endswith("_"):
        t = _UNDERSCORES.sub("_", t).strip("_")
    return t


def filter_key_sql(expr: str) -> str:
    """SQL twin of `filter_key` for a tag already normalised by `split_tags` (as stored in
    the catalog: NFKC, no hidden characters, no whitespace)."""
    return f"trim(regexp_replace(strip_accents(lower({expr})), '_+', '_', 'g'), '_')"


def tidy_sql(text: str) -> str:
    """SQL boolean: the string is tidy (`TIDY_PATTERN`), so `split_tags` only splits it."""
    return f"regexp_full_match({text}, '{TIDY_PATTERN}')"


def split_tags_sql(
    text: str, record_id: str, field: str, function: str, tidy: str | None = None
) -> str:
    """SQL VARCHAR[]: `split_tags` of a VARCHAR expression (NULL stays NULL).

    Tidy strings are split by DuckDB; the others call `function` (the name `sql_functions`
    gives) with `record_id` and `field`, which name the record in reports. `tidy`: the
    string's `tidy_sql` when the caller has it already.
    """
    name = field.replace("'", "''")
    return (
        f"(CASE WHEN {tidy or tidy_sql(text)} THEN string_split({text}, ' ') "
        f"WHEN {text} IS NULL THEN NULL::VARCHAR[] WHEN {text} = '' THEN []::VARCHAR[] "
        f"ELSE {function}(CAST({record_id} AS VARCHAR), '{name}', {text}) END)"
    )


@contextlib.contextmanager
def sql_functions(
    con: Any, found: dict[tuple[str | None, str], str] | None = None, blocked: Collection[str] = ()
) -> Iterator[str]:
    """Register `split_tags` on a DuckDB connection while the block runs; yields its SQL
    name, for `split_tags_sql`: (record id, field name, text) -> VARCHAR[].

    `blocked`: the safety filter's keys, as for `split_tags`. Each record whose string held
    hidden characters is added to `found` as `{(record id, field): "U+0009 U+200B"}` (the
    first finding of a record and field wins).
    Each block gets a new name: DuckDB cannot remove a function inside a failed transaction,
    and a name once registered on a connection cannot be registered again.
    """
    import pyarrow as pa

    found = {} if found is None else found
    keys = frozenset(blocked)

    def split(ids: Any, fields: Any, texts: Any) -> Any:
        out = []
        for rid, fname, text in zip(
            ids.to_pylist(), fields.to_pylist(), texts.to_pylist(), strict=True
        ):
            if text is None:
                out.append(None)
                continue
            tags, hidden = split_tags(text, keys)
            if hidden:
                found.setdefault((rid, fname), hidden)
            out.append(tags)
        return pa.array(out, pa.list_(pa.string()))

    name = f"tagtune_split_tags_{next(_REGISTERED)}"
    con.create_function(
        name,
        split,
        ["VARCHAR", "VARCHAR", "VARCHAR"],
        "VARCHAR[]",
        type="arrow",
        null_handling="special",
        side_effects=True,
    )
    try:
        yield name
    finally:  # fails in an aborted transaction: the name is then left unused
        with contextlib.suppress(Exception):
            con.remove_function(name)
