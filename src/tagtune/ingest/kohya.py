"""kohya-style datasets: folders of images with caption files, and sd-scripts dataset TOMLs.

Both become a list of `CaptionImage`s (an image, its caption file, the subset it belongs to);
`caption_posts` reads their captions and writes them as posts.

- A folder SOURCE: an image with a caption file `NAME.txt` (or `NAME.caption`) beside it is
  a caption-file post, unless a Danbooru metadata sidecar wins (`ingest.caption_files`). The
  image's folder name gives the repeats as in sd-scripts: `10_mychar` = 10 repeats, concept
  `mychar`; a folder not named `N_concept` counts 1 repeat; `0_x`, `10_` or more than
  `MAX_REPEATS` repeats is a bad folder name (its images are `bad-folder` problems).
- A `.toml` SOURCE: an sd-scripts dataset config (`[general]`, `[[datasets]]`,
  `[[datasets.subsets]]`). Each subset's `image_dir` (relative paths: from the TOML's
  folder) holds the images (not its sub-folders, as sd-scripts reads it); the keys that make
  captions and repeats are used (`USED_KEYS`), sd-scripts' training keys are ignored (the
  recipe decides them: `IGNORED_KEYS`), keys that would change what trains in ways tagtune
  does not do are refused (`REFUSED_KEYS`), and any other key is an error naming it.
  Subset keys fall back to the dataset's, then `[general]`'s, as in sd-scripts.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagtune.core.errors import InputError
from tagtune.core.untrusted import NOT_REGULAR, NotRegularFile, read_regular
from tagtune.ingest.images import MEDIA_EXTS
from tagtune.ingest.sources import Problem

CAPTION_EXTS = (".txt", ".caption")
"""Caption file extensions read in a folder SOURCE, in this order (`.txt` wins when both)."""
MAX_REPEATS = 10_000
"""Largest repeat count of a folder name or `num_repeats` (a typo such as 1000000 is refused)."""
MAX_TOML_BYTES = 1024 * 1024
"""A dataset TOML is a few KiB; a larger file is refused."""

USED_KEYS = frozenset(
    {"image_dir", "num_repeats", "caption_extension", "class_tokens", "keep_tokens",
     "caption_separator", "caption_prefix", "caption_suffix"}
)  # fmt: skip
"""sd-scripts subset keys that decide captions and repeats: used."""
IGNORED_KEYS = frozenset(
    {"shuffle_caption", "color_aug", "flip_aug", "face_crop_aug_range", "random_crop",
     "token_warmup_min", "token_warmup_step", "caption_dropout_rate",
     "caption_dropout_every_n_epochs", "caption_tag_dropout_rate", "cache_info", "batch_size",
     "bucket_no_upscale", "bucket_reso_steps", "enable_bucket", "max_bucket_reso",
     "min_bucket_reso", "resolution", "network_multiplier"}
)  # fmt: skip
"""sd-scripts training keys: the recipe decides these (stages, buckets); read and ignored."""
REFUSED_KEYS = {
    "is_reg": "regularisation images are not supported",
    "metadata_file": "fine-tuning metadata JSON is not supported; ingest the images' caption files",
    "conditioning_data_dir": "ControlNet datasets are not supported",
    "keep_tokens_separator": "use keep_tokens (a tag count)",
    "secondary_separator": "not supported; write one separator",
    "enable_wildcard": "wildcard captions are not supported",
    "alpha_mask": "alpha masks are not supported",
    "custom_attributes": "not supported",
}
"""sd-scripts keys that would change what trains in a way tagtune does not do: an error."""

_REPEAT_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class CaptionSubset:
    """Where a group of caption-file images came from and how they are read."""

    origin: str
    """`kohya-folder` or `dataset-toml`."""
    repeats: int = 1
    concept: str | None = None
    extensions: tuple[str, ...] = CAPTION_EXTS
    separator: str = ","
    keep_tokens: int | None = None
    prefix: str = ""
    suffix: str = ""


@dataclass(frozen=True)
class CaptionImage:
    """An image of a kohya-style dataset, its caption file (None: none found) and subset."""

    image: Path
    caption_file: Path | None
    folder: str
    subset: CaptionSubset


def is_media(name: str) -> bool:
    """True for a file name with an image or video extension (what folder scans look at)."""
    low = name.lower()
    return "." in low and low.rsplit(".", 1)[-1] in MEDIA_EXTS


def caption_file_of(image: Path, extensions: tuple[str, ...]) -> Path | None:
    """The caption file beside an image (`NAME` + extension, as sd-scripts looks), or None."""
    for ext in extensions:
        cand = image.with_suffix(ext)
        if cand.is_file() or (cand.exists() and not cand.is_dir()):
            return cand
    return None


def has_sidecar(image: Path) -> bool:
    """True when a Danbooru metadata sidecar (`NAME.EXT.json` or `NAME.json`) is beside it."""
    return image.with_name(image.name + ".json").exists() or image.with_suffix(".json").exists()


def folder_subset(name: str) -> CaptionSubset | str:
    """The subset a folder name gives (`10_mychar`: 10 repeats, concept `mychar`), or why the
    name is bad (a string)."""
    m = _REPEAT_FOLDER.match(name)
    if m is None:
        return CaptionSubset("kohya-folder")
    repeats, concept = int(m[1]), m[2].strip()
    if not 1 <= repeats <= MAX_REPEATS:
        return f"folder {name!r}: repeats must be 1 to {MAX_REPEATS} (sd-scripts' N_concept)"
    if not concept:
        return f"folder {name!r}: no concept after the repeats (sd-scripts' N_concept)"
    return CaptionSubset("kohya-folder", repeats=repeats, concept=concept)


@dataclass
class CaptionScan:
    """The caption-file images of a SOURCE, the problems found reading it, and how many
    images had both a caption file and a metadata sidecar (`both`), whichever won."""

    images: list[CaptionImage]
    problems: list[Problem]
    both: int = 0


def scan_folder(folder: Path, mode: str) -> CaptionScan:
    """The caption-file images of a folder SOURCE under `ingest.caption_files` = `mode`.

    With `metadata-first` an image with a metadata sidecar is left to the Danbooru reader;
    with `prefer` a caption file wins; `ignore` reads none. Images with neither sidecar nor
    caption file are left to the Danbooru reader (its `no-metadata` problem).
    """
    scan = CaptionScan([], [])
    if mode == "ignore":
        return scan
    images, problems = scan.images, scan.problems
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        here = Path(root)
        subset = folder_subset(here.name) if here != folder else CaptionSubset("kohya-folder")
        for name in sorted(files):
            if not is_media(name):
                continue
            img = here / name
            cap = caption_file_of(img, CAPTION_EXTS)
            if cap is None:
                continue
            if has_sidecar(img):
                scan.both += 1
                if mode == "metadata-first":
                    continue
            if isinstance(subset, str):
                problems.append(Problem(str(img), None, "bad-folder", subset))
                continue
            images.append(CaptionImage(img, cap, here.name, subset))
    return scan


# --- sd-scripts dataset TOML -------------------------------------------------------------------


def _check_keys(table: dict[str, Any], where: str, allowed: frozenset[str], file: Path) -> None:
    for key in table:
        field = f"{where}.{key}" if where else key
        if key in REFUSED_KEYS:
            raise InputError(REFUSED_KEYS[key], file=file, field=field, value=table[key])
        if key not in allowed:
            raise InputError(
                "unknown key in an sd-scripts dataset TOML",
                file=file,
                field=field,
                allowed=", ".join(sorted(allowed)),
            )


def _typed(value: Any, kind: type, field: str, file: Path) -> Any:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise InputError(f"must be {kind.__name__}", file=file, field=field, value=value)
    return value


def _subset(keys: dict[str, Any], field: str, toml: Path) -> tuple[Path, CaptionSubset]:
    """(image folder, subset) of one `[[datasets.subsets]]` with its fallbacks applied."""
    if "image_dir" not in keys:
        raise InputError("a subset needs image_dir", file=toml, field=field)
    image_dir = Path(_typed(keys["image_dir"], str, f"{field}.image_dir", toml)).expanduser()
    image_dir = (toml.parent / image_dir).resolve()
    if not image_dir.is_dir():
        raise InputError("image_dir is not a folder", file=toml, field=f"{field}.image_dir",
                         value=str(image_dir))  # fmt: skip
    repeats = _typed(keys.get("num_repeats", 1), int, f"{field}.num_repeats", toml)
    if not 1 <= repeats <= MAX_REPEATS:
        raise InputError("out of range", file=toml, field=f"{field}.num_repeats", value=repeats,
                         allowed=f"1 to {MAX_REPEATS}")  # fmt: skip
    ext = _typed(keys.get("caption_extension", ".caption"), str, f"{field}.caption_extension", toml)
    keep = _typed(keys.get("keep_tokens", 0), int, f"{field}.keep_tokens", toml)
    if keep < 0:
        raise InputError("must be 0 or more", file=toml, field=f"{field}.keep_tokens", value=keep)
    concept = keys.get("class_tokens")
    if concept is not None:
        concept = _typed(concept, str, f"{field}.class_tokens", toml).strip() or None
    sep = _typed(keys.get("caption_separator", ","), str, f"{field}.caption_separator", toml)
    if not sep:
        raise InputError("must not be empty", file=toml, field=f"{field}.caption_separator")
    subset = CaptionSubset(
        "dataset-toml",
        repeats=repeats,
        concept=concept,
        extensions=(ext if ext.startswith(".") else f".{ext}",),
        separator=sep,
        keep_tokens=keep or None,
        prefix=_typed(keys.get("caption_prefix", ""), str, f"{field}.caption_prefix", toml),
        suffix=_typed(keys.get("caption_suffix", ""), str, f"{field}.caption_suffix", toml),
    )
    return image_dir, subset


def read_dataset_toml(toml: Path) -> CaptionScan:
    """The images of an sd-scripts dataset TOML (module notes); a bad TOML is one InputError
    naming the key, an image without its caption file a `no-caption` problem."""
    try:
        data = tomllib.loads(read_regular(toml, MAX_TOML_BYTES).decode("utf-8"))
    except NotRegularFile:
        raise InputError(NOT_REGULAR, file=toml, field="SOURCE") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"not a readable TOML file: {exc}".splitlines()[0], file=toml) from None
    subset_keys = USED_KEYS | IGNORED_KEYS
    _check_keys(data, "", frozenset({"general", "datasets"}), toml)
    general = data.get("general", {})
    if not isinstance(general, dict):
        raise InputError("must be a table", file=toml, field="general")
    _check_keys(general, "general", subset_keys - {"image_dir"}, toml)
    datasets = data.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        raise InputError("needs at least one [[datasets]] table", file=toml, field="datasets")
    images: list[CaptionImage] = []
    problems: list[Problem] = []
    for i, ds in enumerate(datasets):
        if not isinstance(ds, dict):
            raise InputError("must be a table", file=toml, field=f"datasets[{i}]")
        _check_keys(ds, f"datasets[{i}]", (subset_keys - {"image_dir"}) | {"subsets"}, toml)
        subsets = ds.get("subsets", [])
        if not isinstance(subsets, list) or not subsets:
            raise InputError("needs at least one [[datasets.subsets]] table", file=toml,
                             field=f"datasets[{i}].subsets")  # fmt: skip
        inherited = {**general, **{k: v for k, v in ds.items() if k != "subsets"}}
        for j, sub in enumerate(subsets):
            field = f"datasets[{i}].subsets[{j}]"
            if not isinstance(sub, dict):
                raise InputError("must be a table", file=toml, field=field)
            _check_keys(sub, field, subset_keys, toml)
            image_dir, subset = _subset({**inherited, **sub}, field, toml)
            for name in sorted(os.listdir(image_dir)):
                img = image_dir / name
                if not is_media(name) or not img.is_file():
                    continue
                cap = caption_file_of(img, subset.extensions)
                if cap is None:
                    problems.append(no_caption(img, subset.extensions))
                    continue
                images.append(CaptionImage(img, cap, image_dir.name, subset))
    return CaptionScan(images, problems)


def no_caption(image: Path, extensions: tuple[str, ...]) -> Problem:
    """The problem of an image that has no caption file."""
    names = " or ".join(f"{image.stem}{e}" for e in extensions)
    return Problem(str(image), None, "no-caption", f"no caption file ({names}) beside it")
