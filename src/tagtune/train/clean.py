"""Disk space: states of completed stages, unused latent caches and stale temporaries.

A stage that completed needs only its final state (the next stage and `tagtune export` start
from it); a stage that has not completed needs its newest state (`--resume`). So:

- `prune_completed_stage` (run at the end of each stage when
  `train.keep_states_of_completed_stages = "final"`, the default) removes the other states;
- `clean_workspace` (`tagtune clean WS`) finds what can go and, unless `dry_run`, removes it:
  states no stage needs (`states`), latent-cache folders of a VAE other than the recipe's
  (`cache`), and temporaries whose writer is gone (always).

Only tagtune's own files go: a state folder is `step-<N>` with its `COMPLETE` marker and only
the files a state holds; a cache folder is `vae-<16 hex>` with only shards, indexes and a
manifest. A folder that holds anything else is kept and reported (`kept`), never removed.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tagtune.core.stale_temps import (
    UNKNOWN_OWNER_STALE_S,
    entry_size,
    is_stale,
    older_than,
    temp_target,
)
from tagtune.core.workspace import Workspace
from tagtune.train import records as rec
from tagtune.train.state import MARKER, list_states

Kind = Literal["state", "cache", "temporary"]
_STATE_FILE = re.compile(
    r"^(COMPLETE|state\.json|optimizer\.json|zero-rank-\d+\.json|[A-Za-z0-9_]+\.safetensors)$"
)
_CACHE_DIR = re.compile(r"^vae-[0-9a-f]{16}$")
_CACHE_FILE = re.compile(r"^(manifest\.json|index-r\d+\.json|shard-r\d+-\d+\.safetensors)$")
_SHARDS_DIR = re.compile(r"^\.step-\d+\.shards$")


@dataclass
class Removal:
    """One thing `clean_workspace` removes (or would): path, kind, bytes and why."""

    path: Path
    kind: Kind
    bytes: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "bytes": self.bytes,
            "reason": self.reason,
        }


@dataclass
class CleanReport:
    """What `clean_workspace` found: removals, folders kept because tagtune did not write all
    of them, and whether anything was actually removed (`dry_run=False`)."""

    removals: list[Removal] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    dry_run: bool = True

    @property
    def bytes(self) -> int:
        """Bytes the removals hold."""
        return sum(r.bytes for r in self.removals)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (`tagtune clean --json`)."""
        return {
            "dry_run": self.dry_run,
            "bytes": self.bytes,
            "removals": [r.to_json() for r in self.removals],
            "kept": self.kept,
        }


def only_tagtune_files(folder: Path, pattern: re.Pattern[str]) -> bool:
    """Whether every entry of `folder` is a plain file whose name tagtune writes there."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    return all(pattern.match(p.name) and p.is_file() and not p.is_symlink() for p in entries)


def stale_states(states_dir: Path, keep: Path | None) -> tuple[list[Path], list[str]]:
    """Complete states under `states_dir` other than `keep`: (removable, notes on kept ones)."""
    complete, _ = list_states(states_dir)
    removable, notes = [], []
    for p in complete:
        if keep is not None and p.resolve() == keep.resolve():
            continue
        if p.is_symlink() or not only_tagtune_files(p, _STATE_FILE):
            notes.append(f"{p}: holds files tagtune did not write; kept")
            continue
        removable.append(p)
    return removable, notes


def prune_completed_stage(states_dir: Path, final_state: Path) -> list[Path]:
    """Remove every state of a completed stage but its final one; the removed folders."""
    if not (Path(final_state) / MARKER).is_file():
        return []  # never leave a completed stage without a final state
    doomed, _ = stale_states(Path(states_dir), Path(final_state))
    for p in doomed:
        _remove(p)
    return doomed


def _state_removals(ws: Workspace, report: CleanReport) -> list[Removal]:
    out: list[Removal] = []
    if not ws.runs_dir.is_dir():
        return out
    for run_dir in sorted(p for p in ws.runs_dir.iterdir() if p.is_dir()):
        try:
            record = rec.read_run(run_dir)
        except (OSError, ValueError):
            record = None
            report.kept.append(f"{run_dir / rec.RUN_FILE}: unreadable; the run's states kept")
        if not isinstance(record, dict) or not isinstance(record.get("stages"), list):
            continue  # not a run tagtune knows: nothing of it is touched
        for entry in [e for e in record["stages"] if isinstance(e, dict)]:
            states = run_dir / str(entry.get("name")) / "states"
            if entry.get("status") == "complete":
                final = entry.get("final_state")
                if not final or not (ws.root / final / MARKER).is_file():
                    report.kept.append(f"{states}: the stage's final state is missing; kept all")
                    continue
                keep, why = ws.root / final, "state of a completed stage other than its final one"
            else:
                complete, _ = list_states(states)
                keep = complete[-1] if complete else None
                why = "older than the state the stage resumes from"
            doomed, notes = stale_states(states, keep)
            report.kept += notes
            out += [Removal(p, "state", entry_size(p), why) for p in doomed]
    return out


def _cache_removals(ws: Workspace, vae_hash: str, report: CleanReport) -> list[Removal]:
    root = ws.cache_dir / "latents"
    out: list[Removal] = []
    if not root.is_dir():
        return out
    for p in sorted(root.iterdir()):
        if not _CACHE_DIR.match(p.name) or p.is_symlink() or not p.is_dir():
            continue
        if p.name == f"vae-{vae_hash[:16]}":
            continue
        if not only_tagtune_files(p, _CACHE_FILE):
            report.kept.append(f"{p}: holds files tagtune did not write; kept")
            continue
        out.append(Removal(p, "cache", entry_size(p), "latents of a VAE the recipe no longer uses"))
    return out


def _temp_folders(ws: Workspace) -> list[Path]:
    folders = [ws.root, ws.out_dir, ws.cache_dir, ws.runs_dir, ws.cache_dir / "latents"]
    for pattern in ("latents/vae-*",):
        folders += sorted(ws.cache_dir.glob(pattern))
    for pattern in ("*", "*/*", "*/*/states", "*/*/exports", "*/*/samples"):
        folders += sorted(ws.runs_dir.glob(pattern))
    return [f for f in folders if f.is_dir() and not f.is_symlink()]


def _temp_removals(ws: Workspace) -> list[Removal]:
    out: list[Removal] = []
    for folder in _temp_folders(ws):
        for p in sorted(folder.iterdir()):
            if p.is_symlink():
                continue
            stale = (temp_target(p.name) is not None and is_stale(p)) or (
                _SHARDS_DIR.match(p.name) is not None and older_than(p, UNKNOWN_OWNER_STALE_S)
            )
            if stale:
                out.append(
                    Removal(p, "temporary", entry_size(p), "left by a write that was killed")
                )
    return out


def current_vae_hash(ws: Workspace) -> str:
    """The fingerprint of the recipe's VAE (its base model's, or `model.vae`): the latent
    cache folder that stays. Loads the VAE, as `tagtune prepare` does."""
    from tagtune.models.recipe_model import load_recipe_model, vae_source_of

    return vae_source_of(load_recipe_model(ws, tokenizers=False)).fingerprint


def clean_workspace(
    ws: Workspace,
    states: bool = True,
    cache: bool = False,
    dry_run: bool = False,
    vae_hash: str | None = None,
) -> CleanReport:
    """Find (and unless `dry_run`, remove) what no stage, export or current recipe needs.

    `states`: states no stage needs; `cache`: latent-cache folders of other VAEs than the
    recipe's (`vae_hash`, by default the recipe's VAE, loaded); stale temporaries always.
    """
    report = CleanReport(dry_run=dry_run)
    if states:
        report.removals += _state_removals(ws, report)
    if cache:
        report.removals += _cache_removals(ws, vae_hash or current_vae_hash(ws), report)
    report.removals += _temp_removals(ws)
    if not dry_run:
        for r in report.removals:
            _remove(r.path)
    return report


def _remove(path: Path) -> None:
    """Remove a folder or file found above (never a symlink; one gone meanwhile is fine)."""
    if path.is_symlink():
        return
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
