"""A1111-compatible image infotext: the PNG `parameters` text chunk.

Layout (what A1111's PNG-info, image sites and ComfyUI importers read):

    prompt (may span lines)
    Negative prompt: negative (may span lines)
    Steps: 28, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 832x1216, Model hash: 0123456789, Model: name

The parameter line must start with `Steps: `; a value holding `,`, `:` or a newline is
written as a JSON string (A1111's `quote`). `Clip skip: N` is written only when N > 1
(A1111's 1 is SDXL's default penultimate layer). Unknown keys read from other tools are
kept in `extra` and written back after ours.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tagtune.core.atomic import atomic_path
from tagtune.core.errors import InputError
from tagtune.generate.samplers import SAMPLER_LABELS

# our sampler name -> A1111's label (older single-label form for Karras variants,
# which every reader still understands)
_LABEL_TO_NAME = {label.lower(): name for name, label in SAMPLER_LABELS.items()}

NEGATIVE = "Negative prompt:"
PARAMETERS_KEY = "parameters"

# `Key: value` or `Key: "json string"` followed by a comma or the end (A1111's re_param)
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@dataclass
class Infotext:
    """Generation parameters of one image; `sampler` is our name (euler_a, dpmpp_2m, ...)."""

    prompt: str
    negative: str = ""
    steps: int = 28
    sampler: str = "euler_a"
    cfg: float = 7.0
    seed: int = 0
    width: int = 1024
    height: int = 1024
    model_hash: str = ""
    model: str = ""
    clip_skip: int = 1
    extra: dict[str, str] = field(default_factory=dict)


def _quote(value: str) -> str:
    if any(c in value for c in ',:\n"'):
        return json.dumps(value, ensure_ascii=False)
    return value


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _num(value: float) -> str:
    return f"{value:g}" if float(value) != int(value) else str(int(value))


def format_infotext(p: Infotext) -> str:
    """The infotext of one image, A1111's layout (see module doc)."""
    params: dict[str, str] = {
        "Steps": str(p.steps),
        "Sampler": SAMPLER_LABELS.get(p.sampler, p.sampler),
        "CFG scale": _num(p.cfg),
        "Seed": str(p.seed),
        "Size": f"{p.width}x{p.height}",
    }
    if p.model_hash:
        params["Model hash"] = p.model_hash
    if p.model:
        params["Model"] = p.model
    if p.clip_skip > 1:
        params["Clip skip"] = str(p.clip_skip)
    params.update(p.extra)
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in params.items())
    lines = [p.prompt]
    if p.negative:
        lines.append(f"{NEGATIVE} {p.negative}")
    lines.append(line)
    return "\n".join(lines)


def _int(params: dict[str, str], key: str, default: int) -> int:
    if key not in params:
        return default
    raw = params.pop(key)
    try:
        return int(raw)
    except ValueError:
        raise InputError("infotext value is not a whole number", field=key, value=raw) from None


def parse_infotext(text: str) -> Infotext:
    """Read an infotext written by tagtune, A1111 or an image site back into an Infotext.

    The last line is the parameter line when it holds at least three `Key: value` pairs;
    lines before `Negative prompt:` are the prompt, the rest the negative prompt.
    """
    *lines, last = text.rstrip("\n").split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith(NEGATIVE):
            in_negative = True
            line = line[len(NEGATIVE) :].strip()
        (negative if in_negative else prompt).append(line)
    params = {k.strip(): _unquote(v) for k, v in _PARAM.findall(last)}

    info = Infotext(prompt="\n".join(prompt), negative="\n".join(negative))
    info.steps = _int(params, "Steps", info.steps)
    info.seed = _int(params, "Seed", info.seed)
    info.clip_skip = _int(params, "Clip skip", 1)
    if "Sampler" in params:
        label = params.pop("Sampler")
        info.sampler = _LABEL_TO_NAME.get(label.lower(), label)
    if "CFG scale" in params:
        raw = params.pop("CFG scale")
        try:
            info.cfg = float(raw)
        except ValueError:
            raise InputError(
                "infotext value is not a number", field="CFG scale", value=raw
            ) from None
    if "Size" in params:
        raw = params.pop("Size")
        m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", raw)
        if not m:
            raise InputError("infotext size is not WxH", field="Size", value=raw)
        info.width, info.height = int(m.group(1)), int(m.group(2))
    info.model_hash = params.pop("Model hash", "")
    info.model = params.pop("Model", "")
    info.extra = params
    return info


def write_png(image, path: str | Path, info: Infotext) -> Path:
    """Save a PIL image as PNG with the infotext in its `parameters` tEXt chunk, atomically."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text(PARAMETERS_KEY, format_infotext(info))
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=meta)
    return path


def read_png_infotext(path: str | Path) -> Infotext:
    """The infotext of a PNG (its `parameters` chunk), or an InputError naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            text = im.info.get(PARAMETERS_KEY) or getattr(im, "text", {}).get(PARAMETERS_KEY)
    except FileNotFoundError:
        raise InputError("image not found", file=path) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"not a readable image: {exc}", file=path) from None
    if not text:
        raise InputError("the image has no `parameters` infotext", file=path)
    return parse_infotext(text)
