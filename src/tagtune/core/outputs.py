"""The one rule for every file a user sees tagtune write (exports, merges, conversions, cards,
charts, the recipe of `init`): an existing file is replaced only with `--force`, and an input
of the command (the base model, a merge parent, the checkpoint a VAE is baked into, ...) is
never replaced, not even with `--force`.

"The same file" is judged on the real paths (symlinks followed) and on the file identity
(`os.path.samefile`: a hard link is the same file), and an output inside an input folder (a
diffusers base model) or a folder output that holds an input counts too. Writers call
`claim_output` once before any slow work: it applies the rule and removes the stale
temporaries a killed writer of the same target left (`stale_temps`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tagtune.core.errors import InputError
from tagtune.core.stale_temps import Freed, clean_stale_temps

MAX_INPUT_FILES = 10_000
"""Files of an input folder compared by identity with the output (bounded work)."""

Inputs = Iterable[tuple[str, str | Path | None]]
"""(what it is, path) pairs: `("the base model (model.base)", path)`; None paths are skipped."""


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _folder_holds_file(folder: Path, ident: tuple[int, int]) -> bool:
    """Whether a file of `folder` (walked, bounded) is the file with this identity."""
    seen = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            seen += 1
            if seen > MAX_INPUT_FILES:
                return False
            if _identity(Path(root) / name) == ident:
                return True
    return False


def is_same_or_inside(target: str | Path, source: str | Path) -> bool:
    """Whether writing `target` would replace `source` or a part of it.

    True when they are the same path once symlinks are followed, the same file (a hard link),
    `target` lies inside the folder `source`, or the folder `target` holds `source`.
    """
    target, source = Path(target), Path(source)
    t, s = _real(target), _real(source)
    if t == s or s in t.parents or t in s.parents:
        return True
    ident = _identity(target)
    if ident is None or not os.path.lexists(source):
        return False
    if _identity(source) == ident:
        return True
    return source.is_dir() and target.is_file() and _folder_holds_file(source, ident)


def check_output(
    target: str | Path, *, force: bool = False, inputs: Inputs = (), folder: bool = False
) -> None:
    """Refuse to write `target` when it is an input, or exists and `force` is not given.

    An input is refused even with `force`. A file output never replaces a folder (nor a folder
    output a file); with `force` a folder output replaces only an empty folder or a diffusers
    model folder (one with model_index.json), never some other folder.
    """
    target = Path(target)
    exists = os.path.lexists(target)
    if exists and not folder and target.is_dir() and not target.is_symlink():
        raise InputError("is a folder; the output is a file", file=target, hint="give a file path")
    if exists and folder and not target.is_dir():
        raise InputError(
            "is a file; the output is a folder", file=target, hint="give a folder path"
        )
    for what, source in inputs:
        if source is not None and str(source) != "" and is_same_or_inside(target, source):
            which = what if str(source) == str(target) else f"{what} ({source})"
            raise InputError(
                f"would replace {which}; an input is never replaced, not even with --force",
                file=target,
                hint="choose another output path",
            )
    if not exists or (folder and not any(target.iterdir())):
        return
    if not force:
        raise InputError("output exists", file=target, hint="use --force to replace it")
    if folder and not (target / "model_index.json").is_file():
        raise InputError(
            "is a folder that is not a diffusers model; it is not replaced, not even with --force",
            file=target,
            hint="give a new or empty folder",
        )


def claim_output(
    target: str | Path, *, force: bool = False, inputs: Inputs = (), folder: bool = False
) -> Freed:
    """`check_output`, then remove the stale temporaries a killed writer of `target` left.

    Call it once at the start of a writer, before any slow work. Returns what was freed.
    """
    check_output(target, force=force, inputs=inputs, folder=folder)
    return clean_stale_temps(target)
