"""The model card (Markdown), written from the run's own records and nothing typed by hand.

Sources: `WS/runs/<run>/run.json` (recipe as trained, VAE, stages, totals, export and its
hashes), the catalog's `recommended_tags` (from `tags suggest`), and the exported file itself
when run.json lacks its hashes. The shape follows the reference workflow's card: base model,
VAE, type, steps and epochs, image counts, caption rules, recommended tags, usage tips, the
training settings per stage, file hashes (AutoV2 first) and the licence with key points.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tagtune.core.atomic import write_text_atomic
from tagtune.core.catalog import open_catalog
from tagtune.core.errors import WorkspaceError
from tagtune.core.outputs import claim_output
from tagtune.core.workspace import Workspace, open_workspace
from tagtune.models.hashes import file_hashes
from tagtune.recipe.workspace import workspace_recipe

RUN_FILE = "run.json"
MODEL_TYPE = "Full fine-tune, SDXL 1.0"
HASH_ROWS = (
    ("autov2", "AutoV2"),
    ("sha256", "SHA-256"),
    ("autov1", "AutoV1"),  # A1111's legacy hash; files under 2 MiB have none
    ("autov3", "AutoV3"),
    ("crc32", "CRC32"),
    ("blake3", "BLAKE3"),
)
LICENCE_POINTS: dict[str, list[str]] = {
    "Fair AI Public License 1.0-SD": [
        "You may use, copy, modify (including further training and merging) and share the model, "
        "also commercially.",
        "Models derived from it that you share, or let people use over a network, must be released "
        "under the same licence, with their weights available.",
        "Keep the licence text and notices with every copy.",
        "Its Prohibited Uses section (compatible with Stable Diffusion's licence) binds you and "
        "everyone you pass the model on to.",
        "No warranty; contributors are not liable.",
    ]
}
LICENCE_URLS = {"Fair AI Public License 1.0-SD": "https://freedevproject.org/faipl-1.0-sd/"}
RUN_WIDE = (
    ("train", ("seed", "mixed_precision", "weight_dtype", "gradient_checkpointing")),
    ("model", ("prediction_type",)),
    (
        "buckets",
        ("resolution", "min_side", "max_side", "step", "no_upscale", "random_crop", "flip"),
    ),
    ("export", ("dtype",)),
)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    return str(value).replace("|", "\\|")


def _plain(rows: list[list[Any]]) -> list[list[Any]]:
    """Settings cells: whole numbers without thousands separators (1024, not 1,024)."""
    return [[str(v) if type(v) is int else v for v in row] for row in rows]


def _num(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _load_run(ws: Workspace, run: str) -> tuple[Path, dict[str, Any]]:
    path = ws.runs_dir / run / RUN_FILE
    if not path.is_file():
        raise WorkspaceError("no run record", file=path, hint="run `tagtune train` first")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        for key in ("recipe", "stages", "totals"):
            record[key]  # noqa: B018 - presence check
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WorkspaceError(f"run record is malformed ({exc})", file=path) from None
    return path, record


def _recommended(ws: Workspace) -> tuple[str, list[str]]:

    if not ws.catalog_path.is_file():
        raise WorkspaceError("no catalog", file=ws.catalog_path, hint="run `tagtune ingest` first")
    with open_catalog(ws.catalog_path, read_only=True) as con:
        latest = con.execute(
            "SELECT subset FROM recommended_tags ORDER BY built_at DESC, subset LIMIT 1"
        ).fetchone()
        if latest is None:
            raise WorkspaceError(
                "no recommended tags in the catalog",
                file=ws.catalog_path,
                hint="run `tagtune tags WS suggest` first",
            )
        tags = [
            r[0]
            for r in con.execute(
                "SELECT tag FROM recommended_tags WHERE subset = ? ORDER BY rank", [latest[0]]
            ).fetchall()
        ]
    return latest[0], tags


def _export_hashes(
    ws: Workspace, record: dict[str, Any], run_path: Path
) -> tuple[str, dict[str, Any]]:
    export = record.get("export")
    if not export or not export.get("path"):
        raise WorkspaceError(
            "the run has no export yet", file=run_path, hint="run `tagtune export` first"
        )
    file = ws.resolve(export["path"])
    hashes = dict(export.get("hashes") or {})
    if not all(hashes.get(k) for k, _ in HASH_ROWS if k != "autov1"):
        if not file.is_file():
            raise WorkspaceError(
                "exported checkpoint not found (its hashes are not in the run record)", file=file
            )

        hashes = {
            **{k: v for k, v in file_hashes(file).items() if v},
            **{k: v for k, v in hashes.items() if v},
        }
    return file.name, hashes


def _band_rows(bands: list[dict[str, Any]], key: str, show, first: str, middle: str, last: str):
    """Rows (range, tag) of bands listed highest first, each [its bound, the previous bound)."""
    rows, upper = [], None
    for band in bands:
        low = band[key]
        if low is None:
            rng = last.format(hi=show(upper))
        elif upper is None:
            rng = first.format(lo=show(low))
        else:
            rng = middle.format(lo=show(low), hi=show(upper))
        rows.append([rng, band["tag"]])
        upper = low
    return rows


def _quality_rows(bands: list[dict[str, Any]]) -> list[list[str]]:
    return _band_rows(bands, "min", _num, ">= {lo}", "{lo} to < {hi}", "< {hi}")


def _period_rows(periods: list[dict[str, Any]]) -> list[list[str]]:
    return _band_rows(periods, "start", str, "from {lo}", "{lo} to before {hi}", "before {hi}")


def _caption_section(caption: dict[str, Any]) -> list[str]:
    order = caption["order"]
    out = [
        "## Captions",
        "",
        f"Tag order: {', '.join(order)}. Tags are separated by `{caption['separator']}`; "
        "inside each Danbooru group tags are sorted, and in the general group the person-count "
        f"tags come first ({', '.join(t.replace('_', ' ') for t in caption['count_tags'])}).",
        f"Underscores become spaces, except in tags of at most {caption['underscore_max_len']} "
        "characters"
        + (
            f" and in {', '.join(caption['keep_underscores'])}"
            if caption["keep_underscores"]
            else ""
        )
        + "."
        + (
            "" if "meta" in order else " Danbooru meta tags (absurdres, highres, ...) are left out."
        ),
    ]
    if "quality" in order:
        out += [
            "",
            "### Quality (from the post score)",
            "",
            _table(["Score", "Tag"], _quality_rows(caption["quality_bands"])),
        ]
    if "rating" in order:
        rows = [[k, ", ".join(v)] for k, v in caption["ratings"].items()]
        out += ["", "### Rating", "", _table(["Danbooru rating", "Tags"], rows)]
    if "period" in order:
        out += [
            "",
            "### Period (from the post date)",
            "",
            _table(["Post date", "Tag"], _period_rows(caption["periods"])),
        ]
    return out


def _settings_section(record: dict[str, Any]) -> list[str]:
    stages = record["stages"]
    names = [s["name"] for s in stages]
    keys: list[str] = []
    for s in stages:
        keys += [k for k in s.get("settings", {}) if k not in keys and k != "name"]
    rows = [[k, *[s.get("settings", {}).get(k) for s in stages]] for k in keys]
    rows.insert(0, ["warmup_steps (computed)", *[s.get("warmup_steps") for s in stages]])
    recipe = record["recipe"]
    wide = [
        [f"{table}.{k}", recipe[table][k]]
        for table, ks in RUN_WIDE
        for k in ks
        if k in recipe.get(table, {})
    ]
    return [
        "## Training settings",
        "",
        _table(["Setting", *names], _plain(rows)),
        "",
        "Run-wide:",
        "",
        _table(["Setting", "Value"], _plain(wide)),
    ]


def _vae_record(record: dict[str, Any]) -> dict[str, Any] | None:
    """The VAE the exported file carries (its export record), else the one training used."""
    export = record.get("export") or {}
    vae = export.get("vae") or record.get("vae")
    return vae if isinstance(vae, dict) else None


def _vae_text(vae: dict[str, Any]) -> str:
    """`name (AutoV2 ...)` of a baked-in VAE, or that the base model's own VAE is kept."""
    if not vae.get("path"):
        return "the base model's own"
    name = vae.get("name") or Path(vae["path"]).name
    return name + (f" (AutoV2 `{vae['autov2']}`)" if vae.get("autov2") else "")


def _validation_section(stages: list[dict[str, Any]]) -> list[str]:
    """Per stage, validation loss and conditioning gap at its start and end (none: no section)."""
    from tagtune.train.validation import format_gap, start_and_end

    out: list[str] = []
    for s in stages:
        v = start_and_end(s.get("validation"))
        if v["start"] is None:
            continue
        first, last = v["start"], v["end"] or v["start"]
        rows = [
            ["Loss", _loss(first["loss"]), _loss(last["loss"])],
            ["Loss, wrong caption", _loss(first["loss_wrong_caption"]), _loss(last["loss_wrong_caption"])],
            ["Conditioning gap", format_gap(first["conditioning_gap"]), format_gap(last["conditioning_gap"])],
        ]  # fmt: skip
        header = [
            f"Stage {s['name']}",
            f"Start (step {first['step']})",
            f"End (step {last['step']})",
        ]
        out += ["", _table(header, rows)]
    if not out:
        return []
    images = max(start_and_end(s.get("validation"))["images"] for s in stages)
    return [
        "## Validation",
        "",
        f"{images} held-out images, never trained on; loss (MSE) at fixed noise and timesteps "
        "per image. Conditioning gap: how much worse the loss is with another held-out image's "
        "caption, (wrong - right) / right; near 0 the model ignores its captions.",
        *out,
        "",
    ]


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_card(
    record: dict[str, Any],
    recommended: tuple[str, list[str]],
    file_name: str,
    hashes: dict[str, Any],
) -> str:
    """The card's Markdown from a run record, the recommended tags and the export's hashes."""
    from tagtune.tags.analytics import prompt_line

    recipe = record["recipe"]
    project, export = recipe["project"], recipe["export"]
    totals, stages = record["totals"], record["stages"]
    base = record.get("base_model") or {}
    base_name = Path(base.get("path", "")).name or "-"
    base_text = base_name + (f" (AutoV2 `{base['autov2']}`)" if base.get("autov2") else "")
    vae_rows = [["VAE", _vae_text(vae)]] if (vae := _vae_record(record)) is not None else []
    hours = totals.get("seconds", 0) / 3600
    licence = project["license"]
    out = [f"# {project['name']}", ""]
    if project.get("description"):
        out += [project["description"], ""]
    out += [
        _table(
            ["", ""],
            [
                ["Base model", base_text],
                *vae_rows,
                ["Type", MODEL_TYPE],
                ["Training steps", totals["steps"]],
                ["Epochs", totals["epochs"]],
                ["Images", totals["images"]],
                ["Training time", f"{hours:.1f} h"],
                ["Author", project.get("author") or "-"],
                ["Licence", licence],
            ],
        ),
        "",
        "## Training stages",
        "",
        _table(
            [
                "Stage",
                "Subset",
                "Images",
                "Repeats",
                "Epochs",
                "Batch",
                "Steps/epoch",
                "Steps",
                "Status",
            ],
            [
                [
                    s["name"],
                    s["subset"],
                    s["images"],
                    s["repeats"],
                    s["epochs"],
                    s["batch_size"],
                    s["steps_per_epoch"],
                    s["steps"],
                    s["status"],
                ]
                for s in stages
            ]
            + [["total", "", totals["images"], "", totals["epochs"], "", "", totals["steps"], ""]],
        ),
        "",
        *_validation_section(stages),
        *_caption_section(recipe["caption"]),
        "",
        "## Recommended tags",
        "",
        f"Tags that best bring out what the fine-tune learned (Jaccard ranking over subset `{recommended[0]}`):",
        "",
        "```",
        prompt_line(recommended[1]),
        "```",
        "",
        "## Usage tips",
        "",
        f"- Clip skip: {export['clip_skip']}",
        f"- Negative prompt: `{export['negative_prompt']}`",
        "- Resolution: {}x{} (or an SDXL bucket of the same area)".format(*export["resolution"]),
        "",
        *_settings_section(record),
        "",
        "## Files",
        "",
        _table(
            ["", file_name], [[label, f"`{hashes[k]}`"] for k, label in HASH_ROWS if hashes.get(k)]
        ),
        "",
        "## Licence",
        "",
        f"[{licence}]({LICENCE_URLS[licence]})" if licence in LICENCE_URLS else licence,
    ]
    points = LICENCE_POINTS.get(licence)
    if points:
        out += ["", "Key points (the licence text governs):", "", *[f"- {p}" for p in points]]
    return "\n".join(out) + "\n"


def write_card(
    ws: Workspace | str | Path,
    run: str | None = None,
    out: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write the model card of `run` (default: the recipe's run) and return its path.

    Default location: WS/out/<exported file stem>.md. Missing records raise a
    WorkspaceError naming the file that is missing. An existing card is replaced only with
    `force`; the files it is made from (model, run record, recipe, catalog) never are.
    """
    ws = ws if isinstance(ws, Workspace) else open_workspace(ws)
    run = run or workspace_recipe(ws).train.run
    run_path, record = _load_run(ws, run)
    file_name, hashes = _export_hashes(ws, record, run_path)
    target = Path(out) if out else ws.out_dir / f"{Path(file_name).stem}.md"
    inputs = [
        ("the exported model", ws.resolve(record["export"]["path"])),
        ("the run record", run_path),
        *ws.inputs(),
    ]
    claim_output(target, force=force, inputs=inputs)
    text = render_card(record, _recommended(ws), file_name, hashes)
    write_text_atomic(target, text)
    return target
