"""Training sample prompts: the recipe's `sample_prompts` and an sd-scripts prompt file.

The prompt file is what sd-scripts' `--sample_prompts` reads as text: one prompt a line,
blank lines and lines starting with `#` skipped, options after ` --`:

    1girl, smile, upper body --n worst quality --w 832 --h 1216 --d 7 --l 6.5 --s 28 --ss euler_a

`--n` negative prompt, `--w`/`--h` size, `--d` seed, `--l` CFG scale, `--s` steps,
`--ss` sampler (tagtune's names, sd-scripts' names such as `k_euler_a`, or A1111's labels).
Options not given take the recipe's `sample_*` settings; the seed defaults to train.seed plus
the prompt's index. A wrong value or an unknown option is an InputError naming the file,
the line and the option (sd-scripts ignores them silently: a typo would go unnoticed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from tagtune.core.errors import InputError
from tagtune.core.untrusted import read_regular
from tagtune.core.workspace import Workspace
from tagtune.generate.pipeline import MAX_SEED
from tagtune.generate.samplers import SAMPLER_LABELS, SCHEDULERS
from tagtune.recipe.model import MAX_SIDE, TrainConfig

MAX_PROMPT_FILE_BYTES = 1024 * 1024
MAX_PROMPTS = 256
MAX_STEPS = 1000
SD_SCRIPTS_SAMPLERS = {
    "k_euler": "euler", "k_euler_a": "euler_a", "k_lms": "lms", "dpmsolver++": "dpmpp_2m",
    "dpmsolver": "dpmpp_2m", "dpm++_2m": "dpmpp_2m", "dpm++_2m_karras": "dpmpp_2m_karras",
}  # fmt: skip
"""sd-scripts' sampler names -> ours (its other names have no equivalent here)."""
OPTIONS = {"n": "negative prompt", "w": "width", "h": "height", "d": "seed",
           "l": "CFG scale", "s": "steps", "ss": "sampler"}  # fmt: skip


@dataclass(frozen=True)
class SamplePrompt:
    """One training sample: prompt and every setting it is made with."""

    prompt: str
    negative: str
    width: int
    height: int
    seed: int
    cfg_scale: float
    steps: int
    sampler: str


def sampler_name(value: str) -> str | None:
    """Our sampler name for ours, an sd-scripts name or an A1111 label; None when unknown."""
    v = value.strip()
    if v in SCHEDULERS:
        return v
    low = v.lower()
    labels = {label.lower(): name for name, label in SAMPLER_LABELS.items()}
    return SD_SCRIPTS_SAMPLERS.get(low) or labels.get(low) or (low if low in SCHEDULERS else None)


def recipe_sampler(cfg: TrainConfig) -> str:
    """`train.sample_sampler` as our name; a RecipeError-like InputError when unknown."""
    name = sampler_name(cfg.sample_sampler)
    if name is None:
        raise InputError(
            "unknown sampler", field="train.sample_sampler", value=cfg.sample_sampler,
            allowed=", ".join(SCHEDULERS),
        )  # fmt: skip
    return name


def inline_prompts(cfg: TrainConfig, seed: int | None = None) -> list[SamplePrompt]:
    """`train.sample_prompts` with the recipe's settings; prompt i gets seed + i."""
    base = cfg.seed if seed is None else seed
    sampler = recipe_sampler(cfg)
    w, h = cfg.sample_size
    return [
        SamplePrompt(
            p, cfg.sample_negative, w, h, base + i, cfg.sample_cfg_scale, cfg.sample_steps, sampler
        )  # fmt: skip
        for i, p in enumerate(cfg.sample_prompts)
    ]


def sample_prompts(ws: Workspace, cfg: TrainConfig) -> list[SamplePrompt]:
    """Every training sample prompt: `sample_prompts`, then the prompt file's lines.

    Read before training starts, so a bad prompt file stops the run before any slow work.
    """
    prompts = inline_prompts(cfg)
    if cfg.sample_prompts_file:
        path = ws.resolve(cfg.sample_prompts_file)
        defaults = SamplePrompt("", cfg.sample_negative, *cfg.sample_size, 0,
                                cfg.sample_cfg_scale, cfg.sample_steps, recipe_sampler(cfg))  # fmt: skip
        prompts += read_prompt_file(path, defaults, first_seed=cfg.seed + len(prompts))
    return prompts


def read_prompt_file(path: Path, defaults: SamplePrompt, first_seed: int = 0) -> list[SamplePrompt]:
    """The prompts of an sd-scripts prompt file; line k's seed defaults to first_seed + k."""
    try:
        text = read_regular(path, MAX_PROMPT_FILE_BYTES).decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(
            "prompt file not found", file=path, field="train.sample_prompts_file"
        ) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", file=path, field="train.sample_prompts_file") from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=path,
                         field="train.sample_prompts_file") from None  # fmt: skip
    prompts: list[SamplePrompt] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(prompts) == MAX_PROMPTS:
            raise InputError(f"more than {MAX_PROMPTS} prompts", file=path, field=f"line {number}")
        seeded = replace(defaults, seed=first_seed + len(prompts))
        prompts.append(parse_prompt_line(line, seeded, path, number))
    return prompts


def parse_prompt_line(
    line: str, defaults: SamplePrompt, file: Path | str, number: int
) -> SamplePrompt:
    """One prompt-file line: the prompt, then ` --KEY value` options (sd-scripts' syntax)."""
    prompt, *options = line.split(" --")
    where = f"line {number}"
    if not prompt.strip():
        raise InputError("the line has options but no prompt", file=file, field=where)
    out = replace(defaults, prompt=prompt.strip())
    for option in options:
        m = re.fullmatch(r"(\w+)(?:\s+(.*))?", option.strip(), re.DOTALL)
        key = m.group(1).lower() if m else option.strip()
        value = (m.group(2) or "").strip() if m else ""
        field = f"{where}: --{key}"
        if key not in OPTIONS:
            raise InputError("unknown option", file=file, field=field,
                             allowed=", ".join(f"--{k} ({v})" for k, v in OPTIONS.items()))  # fmt: skip
        out = _apply(out, key, value, file, field)
    return out


def _apply(p: SamplePrompt, key: str, value: str, file: Path | str, field: str) -> SamplePrompt:
    """`p` with one option set; an InputError naming the option on a bad value."""
    if key == "n":
        return replace(p, negative=value)
    if key == "ss":
        name = sampler_name(value)
        if name is None:
            raise InputError("unknown sampler", file=file, field=field, value=value,
                             allowed=", ".join(SCHEDULERS))  # fmt: skip
        return replace(p, sampler=name)
    if key == "l":
        number = _number(value, float, 0.0, 30.0, file, field, "a number above 0, at most 30")
        if number <= 0:
            raise InputError("out of range", file=file, field=field, value=value,
                             allowed="a number above 0, at most 30")  # fmt: skip
        return replace(p, cfg_scale=number)
    if key in ("w", "h"):
        size = _number(
            value, int, 8, MAX_SIDE, file, field, f"a multiple of 8 from 8 to {MAX_SIDE}"
        )
        if size % 8:
            raise InputError("not a multiple of 8", file=file, field=field, value=value,
                             allowed=f"a multiple of 8 from 8 to {MAX_SIDE}")  # fmt: skip
        return replace(p, **{"width" if key == "w" else "height": size})
    if key == "d":
        return replace(p, seed=_number(value, int, 0, MAX_SEED, file, field, f"0 to {MAX_SEED}"))
    return replace(p, steps=_number(value, int, 1, MAX_STEPS, file, field, f"1 to {MAX_STEPS}"))


def _number(value, kind, low, high, file, field, allowed):
    """`value` as an int or float within [low, high], else an InputError naming the option."""
    try:
        number = kind(value)
    except ValueError:
        raise InputError("not a number" if kind is float else "not a whole number", file=file,
                         field=field, value=value, allowed=allowed) from None  # fmt: skip
    if not low <= number <= high or number != number:
        raise InputError("out of range", file=file, field=field, value=value, allowed=allowed)
    return number
