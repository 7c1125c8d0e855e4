"""Files and JSON tagtune does not trust, read within limits.

Only regular files are read (`read_regular`): a FIFO named `x.png` or `config.json` would
block a reader forever. Their size can be capped before anything is read.

Python's json module recurses once per nesting level: a document nested 100,000 levels
deep raises RecursionError (or, with a raised recursion limit, overflows the C stack). It
also accepts what other JSON readers refuse: NaN and Infinity, and lone UTF-16 surrogates
(`"\\ud800"`), which cannot be encoded as UTF-8 and make DuckDB reject the whole batch.

`parse_json` measures the nesting depth first (without recursion), then parses, and turns
every refusal into a `BadJSON` whose message says what is wrong and where.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

MAX_DEPTH = 64
"""Deepest nesting accepted by default; real posts, headers and configs nest 2 to 5 levels."""

# a JSON string literal, escapes included (the unrolled form matches in linear time)
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class BadJSON(ValueError):
    """JSON text that is refused; the message says why (with line and column where known)."""

    def __init__(self, reason: str, lineno: int | None = None, colno: int | None = None):
        self.reason, self.lineno, self.colno = reason, lineno, colno
        where = f"line {lineno} column {colno}: " if lineno is not None else ""
        super().__init__(where + reason)


class TooDeep(BadJSON):
    """JSON nested deeper than the limit (valid JSON otherwise, as far as is known)."""


def json_depth(text: str) -> int:
    """Deepest nesting of arrays and objects in `text`, brackets inside strings ignored."""
    if text.count("[") + text.count("{") <= 1:
        return text.count("[") + text.count("{")
    import numpy as np

    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    codes = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max(initial=0))


def _refuse_constant(name: str) -> float:
    raise BadJSON(f"{name} is not a JSON number")


def parse_json(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text, refusing (BadJSON) what is not plain, portable JSON.

    Refused: invalid syntax, nesting deeper than `max_depth`, NaN/Infinity, lone UTF-16
    surrogates, and bytes that are not UTF-8. Never raises RecursionError.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadJSON(f"not UTF-8 text (byte {exc.start})") from None
    cheap = text.count("[") + text.count("{") <= max_depth
    if not cheap and (depth := json_depth(text)) > max_depth:
        raise TooDeep(f"nested {depth} levels deep (at most {max_depth} are read)")
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise BadJSON(exc.msg, exc.lineno, exc.colno) from None
    except RecursionError:  # only if the depth scan was fooled; never let it escape
        raise TooDeep(f"nested too deep (at most {max_depth} levels are read)") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadJSON(
                "holds a lone UTF-16 surrogate (such as \\ud800): not valid Unicode"
            ) from None
    return obj


NOT_REGULAR = "not a regular file (a FIFO, socket or device): never read"


class NotRegularFile(OSError):
    """A path that is a FIFO, socket or device: reading it could block forever."""


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for reading, checked before anything is read: a FIFO named
    `x.png` must not hang a reader. The file is opened without blocking and checked on the
    open descriptor, so it cannot be swapped for a FIFO between the check and the read.

    Raises NotRegularFile (an OSError) for a FIFO, socket or device.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise NotRegularFile(NOT_REGULAR)
    return fh


def read_regular(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file (see `open_regular`); OSError (`errno.EFBIG`) when it
    is larger than `max_bytes`, checked before reading."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise OSError(errno.EFBIG, f"{size} bytes, over the {max_bytes} byte limit")
        return fh.read()
