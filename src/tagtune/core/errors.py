"""Typed errors: each names the file, the field, the value and what is allowed.

The library raises these; the CLI prints them as one line (plus a hint) and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path


class TagtuneError(Exception):
    """Base class for every error a user can act on."""

    hint: str | None = None

    def __init__(
        self,
        reason: str,
        *,
        file: str | Path | None = None,
        field: str | None = None,
        value: object = None,
        allowed: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = str(file) if file is not None else None
        self.field = field
        self.value = value
        self.allowed = allowed
        if hint is not None:
            self.hint = hint
        super().__init__(self.message())

    def message(self) -> str:
        """One line: `file: field = value: reason (allowed: ...)`."""
        parts = []
        if self.file:
            parts.append(self.file)
        if self.field:
            parts.append(f"{self.field} = {self.value!r}" if self.value is not None else self.field)
        text = ": ".join([*parts, self.reason])
        if self.allowed:
            text += f" (allowed: {self.allowed})"
        return text


class RecipeError(TagtuneError):
    """The recipe (tagtune.toml) has a wrong key or value."""


class WorkspaceError(TagtuneError):
    """The workspace folder is missing or incomplete."""


class InputError(TagtuneError):
    """An input file (metadata, image, list) cannot be used."""


class ModelFileError(TagtuneError):
    """A checkpoint file is unsafe, malformed or of the wrong architecture."""


class DependencyError(TagtuneError):
    """An optional dependency (CUDA, bitsandbytes, the CLIP vocabulary) is missing."""


class TrainingError(TagtuneError):
    """Training cannot go on (NaN loss, no data, no resumable state)."""
