"""Recipe schema versions: bring an older recipe's mapping up to the current layout.

Each version step is a function from the old mapping to the next; a recipe newer than this
tagtune is an error naming `schema_version`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tagtune.core.errors import RecipeError

SCHEMA_VERSION = 1


def _migrate_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 0 (no schema_version key) had the same layout."""
    return data


MIGRATIONS = {0: _migrate_0_to_1}


def migrate(data: dict[str, Any], file: str | Path | None = None) -> dict[str, Any]:
    """Bring an older recipe up to SCHEMA_VERSION; a newer one is an error."""
    version = data.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 0:
        raise RecipeError(
            "unsupported recipe version",
            file=file,
            field="schema_version",
            value=version,
            allowed=f"0..{SCHEMA_VERSION}",
        )
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](dict(data))
        version += 1
    data["schema_version"] = SCHEMA_VERSION
    return data
