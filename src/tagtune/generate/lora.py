"""LoRAs for `generate`: applied to the loaded model in memory, recorded as A1111 records them.

A1111 (extensions-builtin/Lora) writes LoRA use into the infotext in two places:
- the prompt carries `<lora:NAME:STRENGTH>` (its own "add network to prompt" option appends
  the tag to the prompt; the tags are stripped before the prompt is encoded);
- the parameter line carries `Lora hashes: "NAME: HASH, NAME2: HASH2"`, where HASH is the
  LoRA's short hash: the first 12 hex digits of the file's `sshs_model_hash` metadata when
  it has one, else of the SHA-256 of the bytes after the safetensors header (the "addnet"
  hash, = AutoV3), and NAME has `:` and `,` removed.
NAME here is the file name without its extension (A1111 finds a LoRA by file name or alias).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tagtune.core.errors import InputError
from tagtune.models.hashes import file_hashes
from tagtune.models.lora_format import LoraModule, apply_lora, read_lora

LORA_TAG = re.compile(r"<lora:([^:>]+):([^:>]+)(?::[^>]*)?>")
HASHES_FIELD = "Lora hashes"
SHORT_HASH = 12


@dataclass
class LoadedLora:
    """One LoRA file read for generation: its A1111 name, strength, short hash and modules."""

    path: Path
    name: str
    strength: float
    shorthash: str
    modules: dict[str, LoraModule]


@dataclass
class LoraUse:
    """What the infotext records of the LoRAs used: the prompt tags and the extra fields."""

    prompt_suffix: str = ""
    infotext_extra: dict[str, str] = field(default_factory=dict)


def _num(value: float) -> str:
    return f"{value:g}"


def short_hash(path: Path, metadata: dict[str, str]) -> str:
    """A1111's LoRA short hash: sshs_model_hash[:12] when present, else AutoV3[:12]."""
    given = metadata.get("sshs_model_hash", "").strip().lower()
    if given:
        return given[:SHORT_HASH]
    hashes = file_hashes(path)
    return str(hashes["autov3"] or hashes["sha256"])[:SHORT_HASH]


def a1111_name(path: Path) -> str:
    """The name a LoRA tag and the `Lora hashes` field give this file (`:`, `,`, `<>` removed)."""
    return re.sub(r"[:,<>]", "", path.stem) or "lora"


def load_loras(refs: Sequence[tuple[str | Path, float]]) -> list[LoadedLora]:
    """Read and validate each (file, strength); errors name the file."""
    out = []
    for raw, strength in refs:
        path = Path(raw)
        if not path.is_file():
            raise InputError("LoRA file not found", file=path, field="loras")
        modules, metadata = read_lora(path)
        out.append(
            LoadedLora(path, a1111_name(path), float(strength), short_hash(path, metadata), modules)
        )
    return out


def lora_use(loras: Sequence[LoadedLora]) -> LoraUse:
    """The prompt tags and `Lora hashes` field for these LoRAs (empty when there are none)."""
    if not loras:
        return LoraUse()
    suffix = "".join(f" <lora:{lo.name}:{_num(lo.strength)}>" for lo in loras)
    hashes = ", ".join(f"{lo.name}: {lo.shorthash}" for lo in loras)
    return LoraUse(suffix, {HASHES_FIELD: hashes})


def with_loras(components: Any, loras: Sequence[LoadedLora], *, owned: bool) -> Any:
    """`components` with the LoRAs added to their weights (a copy unless `owned`).

    Every name of every LoRA must map to a module (else ModelFileError listing them, and
    nothing is changed); a model the caller passed in is copied first, never changed.
    """
    if not loras:
        return components
    target = components if owned else copy.deepcopy(components)
    for lo in loras:
        apply_lora(target, [(lo.modules, lo.strength)], source=str(lo.path))
    return target


def lora_tags(prompt: str) -> list[tuple[str, str]]:
    """The (name, strength) of each `<lora:NAME:STRENGTH>` tag in a prompt."""
    return [(m.group(1), m.group(2)) for m in LORA_TAG.finditer(prompt)]


def strip_lora_tags(prompt: str) -> str:
    """The prompt without its `<lora:...>` tags (what A1111 encodes)."""
    return LORA_TAG.sub("", prompt).rstrip()
