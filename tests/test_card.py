"""The model card holds the run's real numbers, caption rules, tags, settings and hashes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tagtune.card import write_card
from tagtune.cli.main import app
from tagtune.core.catalog import open_catalog
from tagtune.core.errors import WorkspaceError
from tagtune.recipe.model import Recipe
from tagtune.recipe.workspace import init_workspace

HASHES = {
    "sha256": "ab" * 32,
    "autov1": "12345678",
    "autov2": "ABABABABAB",
    "autov3": "cd" * 32,
    "crc32": "0D4A1185",
    "blake3": "ef" * 32,
}


def stage(s, images, steps_per_epoch, warmup, seconds):
    return {
        "name": s.name,
        "status": "complete",
        "subset": s.subset,
        "images": images,
        "repeats": s.repeats,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "gradient_accumulation": 1,
        "steps_per_epoch": steps_per_epoch,
        "steps": steps_per_epoch * s.epochs,
        "warmup_steps": warmup,
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-02T00:00:00+00:00",
        "seconds": seconds,
        "final_loss": 0.1,
        "settings": s.model_dump(mode="json"),
        "inputs": {"captions_sha256": "00", "latents_vae": "11"},
        "final_state": "x",
    }


@pytest.fixture()
def ws(tmp_path):
    recipe = Recipe()
    w = init_workspace(tmp_path / "ws", recipe)
    main, fav = recipe.train.stages
    record = {
        "run": "run1",
        "tagtune_version": "0.1.0",
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-03T00:00:00+00:00",
        "recipe": recipe.model_dump(mode="json"),
        "base_model": {
            "path": "models/community-sdxl.safetensors",
            "sha256": "99" * 32,
            "autov2": "9999999999",
        },
        "stages": [stage(main, 8997, 2250, 5850, 216000.0), stage(fav, 2317, 580, 0, 72000.0)],
        "totals": {"epochs": 51, "steps": 72982, "images": 8997, "seconds": 288000.0},
        "export": {"path": "out/tagtune-sdxl.safetensors", "hashes": dict(HASHES)},
    }
    (w.runs_dir / "run1").mkdir(parents=True)
    (w.runs_dir / "run1" / "run.json").write_text(json.dumps(record))
    with open_catalog(w.catalog_path) as con:
        con.executemany(
            "INSERT INTO recommended_tags (subset, rank, tag, jaccard, count) VALUES (?, ?, ?, ?, ?)",
            [["favorites", 1, "blue sky", 0.4, 900], ["favorites", 2, "hat (object)", 0.3, 700]],
        )
    return w


def test_card_has_the_runs_numbers(ws):
    text = write_card(ws).read_text()
    for expected in [
        "# tagtune-sdxl",
        "| Base model | community-sdxl.safetensors (AutoV2 `9999999999`) |",
        "| Type | Full fine-tune, SDXL 1.0 |",
        "| Training steps | 72,982 |",
        "| Epochs | 51 |",
        "| Images | 8,997 |",
        "| Training time | 80.0 h |",
        "| main | all | 8,997 | 1 | 26 | 4 | 2,250 | 58,500 | complete |",
        "| favorites | favorites | 2,317 | 1 | 25 | 4 | 580 | 14,500 | complete |",
        "| warmup_steps (computed) | 5850 | 0 |",
        "| buckets.resolution | 1024 |",
        "Danbooru meta tags (absurdres, highres, ...) are left out.",
        "| lr_unet | 1e-05 | 1e-06 |",
        "| lr_text_encoder | 2e-06 | 0 |",
        "| noise_offset | 0 | 0.0357 |",
        "| scheduler | cosine_with_restarts | constant |",
        "| optimizer | adamw8bit | adamw8bit |",
        "Tag order: artist, copyright, character, general, quality, rating, period.",
        "| >= 150 | masterpiece |",
        "| 100 to < 150 | best quality |",
        "| < -5 | worst quality |",
        "| e | nsfw, explicit |",
        "| from 2021-01-01 | newest |",
        "| 2018-01-01 to before 2021-01-01 | recent |",
        "| before 2011-01-01 | oldest |",
        "blue sky, hat \\(object\\)",
        "- Clip skip: 1",
        "- Negative prompt: `worst quality`",
        "[Fair AI Public License 1.0-SD](https://freedevproject.org/faipl-1.0-sd/)",
        "Key points",
    ]:
        assert expected in text, expected
    assert (ws.out_dir / "tagtune-sdxl.md").is_file()


def test_hashes_listed_autov2_first(ws):
    text = write_card(ws).read_text()
    rows = [
        line
        for line in text.splitlines()
        if line.startswith(("| AutoV", "| SHA", "| CRC", "| BLAKE"))
    ]
    assert rows == [
        "| AutoV2 | `ABABABABAB` |",
        f"| SHA-256 | `{'ab' * 32}` |",
        "| AutoV1 | `12345678` |",
        f"| AutoV3 | `{'cd' * 32}` |",
        "| CRC32 | `0D4A1185` |",
        f"| BLAKE3 | `{'ef' * 32}` |",
    ]


def test_missing_hashes_are_computed_from_the_export(ws):
    run_json = ws.runs_dir / "run1" / "run.json"
    record = json.loads(run_json.read_text())
    record["export"]["hashes"] = {}
    run_json.write_text(json.dumps(record))
    (ws.out_dir / "tagtune-sdxl.safetensors").write_bytes(b"hello world")
    text = write_card(ws).read_text()
    assert "| CRC32 | `0D4A1185` |" in text
    assert "| AutoV2 | `B94D27B993` |" in text


def test_the_vae_the_export_carries_is_named_under_the_base_model(ws):
    run_json = ws.runs_dir / "run1" / "run.json"
    record = json.loads(run_json.read_text())
    assert (
        "| VAE |" not in write_card(ws, force=True).read_text()
    )  # a record from before VAEs were named
    fix = {"path": "vaes/sdxl-vae-fix.safetensors", "name": "sdxl-vae-fix.safetensors",
           "sha256": "77" * 32, "autov2": "7777777777", "fingerprint": "88" * 32}  # fmt: skip
    record["vae"] = {**fix, "path": "", "name": ""}  # trained on the base's own VAE ...
    record["export"]["vae"] = fix  # ... but the export baked the fix VAE in
    run_json.write_text(json.dumps(record))
    text = write_card(ws, force=True).read_text()
    assert (
        "| Base model | community-sdxl.safetensors (AutoV2 `9999999999`) |\n"
        "| VAE | sdxl-vae-fix.safetensors (AutoV2 `7777777777`) |"
    ) in text
    del record["export"]["vae"]
    run_json.write_text(json.dumps(record))
    assert "| VAE | the base model's own |" in write_card(ws, force=True).read_text()
    assert "| train.weight_dtype | bf16 |" in text


def test_other_licence_is_named_only(ws):
    run_json = ws.runs_dir / "run1" / "run.json"
    record = json.loads(run_json.read_text())
    record["recipe"]["project"]["license"] = "CreativeML Open RAIL++-M"
    record["recipe"]["caption"]["order"] = ["artist", "general", "rating"]
    run_json.write_text(json.dumps(record))
    text = write_card(ws).read_text()
    assert text.rstrip().endswith("## Licence\n\nCreativeML Open RAIL++-M")
    assert "### Rating" in text and "### Quality" not in text and "### Period" not in text


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("run", "runs/run1/run.json: no run record"),
        ("catalog", "catalog.duckdb: no catalog"),
        ("export", "runs/run1/run.json: the run has no export yet"),
        (
            "export_file",
            "out/tagtune-sdxl.safetensors: exported checkpoint not found (its hashes are not in the run record)",
        ),
    ],
)
def test_missing_records_name_the_file(ws, breakage, message):
    run_json = ws.runs_dir / "run1" / "run.json"
    record = json.loads(run_json.read_text())
    if breakage == "run":
        run_json.unlink()
    elif breakage == "catalog":
        ws.catalog_path.unlink()
    elif breakage == "export":
        record["export"] = None
        run_json.write_text(json.dumps(record))
    else:
        record["export"]["hashes"] = {}
        run_json.write_text(json.dumps(record))
    with pytest.raises(WorkspaceError) as exc:
        write_card(ws)
    assert str(exc.value) == f"{ws.root}/{message}"


def test_cli_card(ws, tmp_path):
    out = tmp_path / "card.md"
    res = CliRunner().invoke(
        app, ["card", str(ws.root), "--run", "run1", "--out", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"card": str(out)}
    assert "| Training steps | 72,982 |" in out.read_text()


def test_card_over_an_existing_file_needs_force_and_never_replaces_the_model(ws, capsys):
    from cli_main import run_cli

    card = ws.out_dir / "tagtune-sdxl.md"
    card.write_text("my notes")
    res = run_cli(capsys, "card", ws.root)
    assert res.code == 2 and res.error_lines == [f"error: {card}: output exists"]
    assert card.read_text() == "my notes"
    assert run_cli(capsys, "card", ws.root, "--force").code == 0
    assert card.read_text().startswith("# ")
    model = ws.out_dir / "tagtune-sdxl.safetensors"
    model.write_bytes(b"weights")
    for target in (model, ws.runs_dir / "run1" / "run.json", ws.recipe_path):
        res = run_cli(capsys, "card", ws.root, "--out", target, "--force")
        assert res.code == 2 and "an input is never replaced" in res.error_lines[0]
    assert model.read_bytes() == b"weights"


def _evaluation(step, loss, wrong):
    gap = (wrong - loss) / loss
    keys = ("step", "epoch", "loss", "loss_wrong_caption", "conditioning_gap", "seconds")
    return dict(zip(keys, (step, step / 2250, loss, wrong, gap, 12.5), strict=True))


def test_card_has_a_validation_table_per_stage(ws):
    run_json = ws.runs_dir / "run1" / "run.json"
    record = json.loads(run_json.read_text())
    assert "## Validation" not in write_card(ws).read_text()  # older records: no section
    main, fav = record["stages"]
    main["validation"] = {
        "images": 64,
        "post_ids": list(range(64)),
        "evaluations": [
            _evaluation(0, 0.2, 0.2),
            _evaluation(2250, 0.15, 0.153),
            _evaluation(58500, 0.1, 0.112),
        ],
    }
    fav["validation"] = {
        "images": 64,
        "post_ids": list(range(64)),
        "evaluations": [_evaluation(0, 0.1, 0.112), _evaluation(14500, 0.095, 0.11)],
    }
    run_json.write_text(json.dumps(record))
    text = write_card(ws, force=True).read_text()
    for expected in [
        "## Validation",
        "64 held-out images, never trained on",
        "| Stage main | Start (step 0) | End (step 58500) |",
        "| Loss | 0.2000 | 0.1000 |",
        "| Loss, wrong caption | 0.2000 | 0.1120 |",
        "| Conditioning gap | +0.00% | +12.00% |",
        "| Stage favorites | Start (step 0) | End (step 14500) |",
        "| Loss | 0.1000 | 0.0950 |",
        "| Conditioning gap | +12.00% | +15.79% |",
    ]:
        assert expected in text, expected
