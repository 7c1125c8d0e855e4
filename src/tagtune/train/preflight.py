"""Checks a training run makes before any work: every problem at once, each naming where.

`check_run` is what `tagtune train --dry-run` reports and what `tagtune train` runs before
its first stage, so an 8-bit optimizer on a CPU, an empty `favorites` subset or a latent
cache of another VAE stop the run before stage main trains for hours, not after. Each
`Problem` names the file, the stage and the recipe key; warnings (posts without a cached
latent) are reported but do not stop a run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tagtune.core.catalog import open_catalog, subset_where
from tagtune.core.errors import TagtuneError, TrainingError
from tagtune.core.subsets import stage_field
from tagtune.core.workspace import Workspace
from tagtune.ingest.verdicts import catalog_is_current
from tagtune.prepare.latent_cache import MANIFEST, latents_dir
from tagtune.prepare.planned import planned_latents
from tagtune.recipe.model import Recipe

SHOWN_POSTS = 5
"""Post ids listed for a count of posts without a cached latent."""


@dataclass(frozen=True)
class Problem:
    """One thing that stops (`error`) or weakens (`warning`) a run, and where it is."""

    message: str
    file: str
    key: str = ""
    stage: str = ""
    severity: str = "error"
    hint: str = ""

    def line(self) -> str:
        """`file: stage 'main': key: message`, one line."""
        where = [self.file, f"stage {self.stage!r}" if self.stage else "", self.key]
        return ": ".join([w for w in where if w] + [self.message])

    def to_json(self) -> dict[str, str]:
        """JSON-ready form (`tagtune train --dry-run --json`)."""
        return asdict(self)


def _cuda() -> tuple[bool, bool]:
    import torch

    available = torch.cuda.is_available()
    return available, available and torch.cuda.is_bf16_supported()


def machine_problems(
    recipe: Recipe, stages: Sequence[int], file: str, world_size: int = 1, zero2: bool = False
) -> list[Problem]:
    """Optimizer, precision and fused-backward settings this machine cannot run."""
    cfg, out = recipe.train, []
    cuda, bf16 = _cuda()
    if cfg.mixed_precision != "no" and not cuda:
        out.append(Problem(f"{cfg.mixed_precision} mixed precision needs a CUDA GPU "
                           '(allowed: "no" on this machine)', file, "train.mixed_precision"))  # fmt: skip
    elif cfg.mixed_precision == "bf16" and not bf16:
        out.append(Problem("this GPU does not support bf16 (allowed: fp16, no)", file,
                           "train.mixed_precision"))  # fmt: skip
    for i in stages:
        st = cfg.stages[i]
        key = f"train.stages[{i}].optimizer"
        if st.optimizer == "adamw8bit" and not cuda:
            out.append(Problem("adamw8bit needs a CUDA GPU (bitsandbytes) (allowed: adamw, "
                               "adafactor on this machine)", file, key, st.name))  # fmt: skip
        elif st.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            out.append(Problem("adamw8bit needs bitsandbytes, which is not installed", file,
                               key, st.name))  # fmt: skip
        if cfg.fused_backward:
            why = [
                f"optimizer = {st.optimizer!r}" if st.optimizer != "adafactor" else "",
                f"gradient_accumulation = {st.gradient_accumulation}"
                if st.gradient_accumulation > 1 else "",
                f"{world_size} processes" if world_size > 1 else "",
                "DeepSpeed" if zero2 else "",
                "mixed_precision = 'fp16'" if cfg.mixed_precision == "fp16" else "",
            ]  # fmt: skip
            if any(why):
                out.append(Problem(
                    "fused_backward needs adafactor, gradient_accumulation 1, one process without "
                    "DeepSpeed and no fp16 loss scaling, but stage "
                    f"{st.name!r} has {', '.join(w for w in why if w)}",
                    file, "train.fused_backward", st.name,
                ))  # fmt: skip
    return out


def cache_problem(ws: Workspace, fingerprint: str) -> Problem | None:
    """None when the latent cache of the VAE with `fingerprint` exists, else what is there."""
    folder = latents_dir(ws.cache_dir, fingerprint)
    if (folder / MANIFEST).is_file():
        return None
    others = sorted(p.name for p in (ws.cache_dir / "latents").glob("vae-*") if p.is_dir())
    there = f"; the cache holds {', '.join(others)} (another VAE)" if others else ""
    return Problem(
        f"no latent cache for the recipe's VAE ({folder.name}){there}: run `tagtune prepare`",
        str(folder),
        "model.vae" if others else "",
    )


def data_problems(
    ws: Workspace, recipe: Recipe, stages: Sequence[int], latents: Any, cached: bool
) -> tuple[list[Problem], dict[str, list[Any]]]:
    """Catalog, subsets and latents of the stages to run: (problems, examples per stage).

    `latents` is the cache (`cached`) or the planned one; every stage must keep at least one
    image once the run's held-out images are left out.
    """
    from tagtune.train.examples import load_examples
    from tagtune.train.validation import choose_held_out

    recipe_file, out, examples = str(ws.recipe_path), [], {}
    if not ws.catalog_path.is_file():
        return [Problem("no catalog: run `tagtune ingest` first", str(ws.catalog_path))], {}
    with open_catalog(ws.catalog_path, read_only=True) as con:
        if not catalog_is_current(con, recipe):
            out.append(Problem(
                "the recipe's safety lists or legacy_ratings changed since the catalog was judged",
                str(ws.catalog_path), "safety",
                hint="run `tagtune caption WS` (it re-judges the posts and rebuilds the captions)",
            ))  # fmt: skip
            return out, {}
    try:
        held = {h.post_id for h in choose_held_out(ws, recipe, latents)}
    except TagtuneError as exc:
        return [*out, Problem(exc.reason, recipe_file, "validation.subset")], {}
    for i in stages:
        st = recipe.train.stages[i]
        key = stage_field(recipe.train.stages, st)
        try:
            found, missing = load_examples(ws, st, latents, recipe.buckets.flip, held)
        except TagtuneError as exc:  # names its own key and value
            out.append(Problem(exc.message(), recipe_file, "" if exc.field else key, st.name))
            continue
        examples[st.name] = found
        if not found:
            out.append(Problem(
                f"no training images in subset {st.subset!r}"
                + (f" ({len(held)} held out for validation)" if held else "")
                + (f", {missing} captioned posts without a cached latent" if missing else ""),
                recipe_file, key, st.name,
            ))  # fmt: skip
        elif missing and cached:
            ids = _missing_ids(ws, recipe, i, latents, held)
            shown = ", ".join(map(str, ids[:SHOWN_POSTS])) + (
                ", ..." if len(ids) > SHOWN_POSTS else ""
            )
            out.append(Problem(f"{missing} captioned posts have no cached latent (posts {shown}): "
                               "run `tagtune prepare`", str(ws.cache_dir), key, st.name,
                               "warning"))  # fmt: skip
    return out, examples


def _missing_ids(ws: Workspace, recipe: Recipe, i: int, latents: Any, held: set[int]) -> list[int]:
    st = recipe.train.stages[i]
    with open_catalog(ws.catalog_path, read_only=True) as con:
        ids = [r[0] for r in con.execute(
            "SELECT c.post_id FROM captions c JOIN posts ON posts.id = c.post_id "
            f"WHERE {subset_where(st.subset)} ORDER BY c.post_id").fetchall()]  # fmt: skip
    have = {r.post_id for r in latents.records(ids)}
    return [p for p in ids if p not in have and p not in held]


def raise_if_errors(problems: Sequence[Problem]) -> None:
    """A TrainingError listing every error (one line, `; ` between them) when there is one."""
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        hint = errors[0].hint if len(errors) == 1 and errors[0].hint else None
        raise TrainingError(
            f"{len(errors)} problem(s) before training: " + "; ".join(p.line() for p in errors),
            hint=hint or "`tagtune train WS --dry-run` lists them; fix the recipe or the workspace",
        )


def check_before_training(
    ws: Workspace,
    recipe: Recipe,
    stages: Sequence[int],
    latents: Any,
    fingerprint: str,
    world_size: int = 1,
    zero2: bool = False,
) -> Any:
    """Run every check of `stages` before the first one trains; returns the latents to train
    from (`latents`, or the cache of the VAE with `fingerprint`). A TrainingError lists every
    error at once (`raise_if_errors`)."""
    from tagtune.prepare.encode import open_latent_cache

    problems = machine_problems(recipe, stages, str(ws.recipe_path), world_size, zero2)
    cached = latents is not None
    if latents is None and stages:
        missing = cache_problem(ws, fingerprint)
        if missing is None:
            latents, cached = open_latent_cache(ws.cache_dir, fingerprint), True
        else:
            problems.append(missing)
    if stages:
        planned = latents if latents is not None else planned_latents(ws, recipe.buckets)
        problems += data_problems(ws, recipe, stages, planned, cached)[0]
    raise_if_errors(problems)
    return latents
