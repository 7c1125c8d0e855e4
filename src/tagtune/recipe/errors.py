"""Turn pydantic's validation errors into one-line RecipeErrors that name the key, the value
and what is allowed (`train.stages[0].optimizer = 'adam': not an allowed value (allowed: ...)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tagtune.core.errors import RecipeError


def _loc_to_key(loc: tuple[Any, ...]) -> str:
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += ("." if key else "") + str(part)
    return key


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the last key of `loc` (for 'allowed keys')."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = (
            model.model_fields.get(part)
            if isinstance(model, type) and issubclass(model, BaseModel)
            else None
        )
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        model = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if model is None:
            return None
    return model


def recipe_error(
    exc: ValidationError, root: type[BaseModel], file: str | Path | None
) -> RecipeError:
    """The first validation error as one RecipeError: key path, value, reason, what is allowed."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = _loc_to_key(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        owner = _model_at(root, loc)
        allowed = ", ".join(owner.model_fields) if owner else None
        return RecipeError("unknown key", file=file, field=key, allowed=allowed)
    if kind == "literal_error":
        return RecipeError(
            "not an allowed value",
            file=file,
            field=key,
            value=err.get("input"),
            allowed=str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", "),
        )
    if kind == "missing":
        return RecipeError("required key is missing", file=file, field=key)
    if kind == "value_error":
        return RecipeError(str(ctx.get("error", err["msg"])), file=file)
    return RecipeError(err["msg"].lower(), file=file, field=key or None, value=err.get("input"))
