"""Render a Recipe as a commented TOML file, so `tagtune init` writes every setting with its docs.

tomllib reads TOML but the standard library writes none; the recipe only holds strings,
numbers, booleans, dates, lists and tables, which this small writer covers.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import BaseModel

from tagtune.recipe.model import Recipe


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{ "
            + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None)
            + " }"
        )
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _comment(text: str | None) -> list[str]:
    return [f"# {line}".rstrip() for line in (text or "").splitlines()]


def _table(model: BaseModel, header: str | None, array: bool = False) -> list[str]:
    lines: list[str] = []
    if header:
        lines += ["", f"[[{header}]]" if array else f"[{header}]"]
    nested: list[tuple[str, Any]] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel) or (
            isinstance(value, list)
            and value
            and all(isinstance(x, BaseModel) for x in value)
            and name == "stages"
        ):
            nested.append((name, value))
            continue
        if value is None:
            continue
        lines += _comment(field.description)
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            rows = ",\n".join(
                "    " + _value({k: v for k, v in item.model_dump().items() if v is not None})
                for item in value
            )
            lines.append(f"{name} = [\n{rows},\n]")
        else:
            lines.append(f"{_key(name)} = {_value(value)}")
    for name, value in nested:
        path = f"{header}.{name}" if header else name
        if isinstance(value, list):
            for item in value:
                lines += _table(item, path, array=True)
        else:
            lines += _table(value, path)
    return lines


def render_recipe(recipe: Recipe | None = None) -> str:
    """The recipe as TOML text with a comment above every key."""
    recipe = recipe or Recipe()
    head = [
        "# tagtune recipe. Every key is documented above its value; defaults reproduce the",
        "# reference workflow (two stages: main, then favorites). Flags on the command line",
        "# override these values for one run.",
    ]
    return "\n".join(head + _table(recipe, None)) + "\n"
