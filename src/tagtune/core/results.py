"""What library functions return: dataclasses that are `Result`s, each with `to_json()`.

`Result.to_json()` gives a result's fields as JSON-ready data (paths as strings, tuples as
lists, nested results through their own `to_json()`); a result whose JSON form differs from
its fields (a share computed from counts, a field left out) overrides it. `--json` prints
`json_ready(result)` (`tagtune.cli.common.print_json`), so every command prints the same way.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import PurePath
from typing import Any


class Result:
    """Base of the library's result dataclasses: `to_json()` returns JSON-ready data."""

    def to_json(self) -> Any:
        """The fields, JSON-ready (paths as strings, nested results as their `to_json()`)."""
        return {f.name: json_ready(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


def json_ready(value: Any) -> Any:
    """`value` as data `json.dumps` takes: results through `to_json()`, dataclasses as dicts,
    paths as strings, tuples and sets as lists; anything else is returned as it is."""
    if isinstance(value, Result):
        return value.to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_ready(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k) if isinstance(k, PurePath) else k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_ready(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return value
