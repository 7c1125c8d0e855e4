"""A LoRA stage: only its adapters train, states hold only them, stages chain both ways, and
`tagtune export` writes a kohya LoRA that merges into the base like the trained adapters act."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from tagtune.core.errors import TrainingError
from tagtune.recipe.model import StageConfig
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
from tagtune.train.stages import run_training

GOLDEN = Path(__file__).parents[1] / "data" / "sdxl-lora-keys.tsv"
LORA = {"rank": 4, "alpha": 2.0, "targets": ["attention", "feed_forward", "convs"], "conv_rank": 2}
MERGE_TOLERANCE = 1e-5
"""Max |merged - in-memory| of U-Net and encoder outputs (fp32 export): float rounding only;
the LoRA itself moves the same outputs by 0.1 to 1."""


def _lora_recipe(**overrides):
    stage = {
        "method": "lora", "lora": LORA, "lr_unet": 1e-2, "lr_text_encoder": 1e-2,
        "lr_text_encoder_2": 0.0, **overrides,
    }  # fmt: skip
    return tiny_train_recipe(**stage)


def _golden() -> dict[str, tuple[str, str, str]]:
    rows = {}
    for line in GOLDEN.read_text().splitlines():
        if line.startswith(("#", "name\t")):
            continue
        name, group, down, up, _ = line.split("\t")
        rows[name] = (group, down, up)
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_sdxl):
    """A LoRA stage (U-Net with LoCon + both encoders) trained once: (ws, recipe, components)."""
    recipe = _lora_recipe(epochs=1, lr_text_encoder_2=1e-2)
    recipe.project.description = "synthetic shapes"
    ws, latents = make_training_workspace(tmp_path_factory.mktemp("lora") / "ws", recipe, n=4)
    components = copy.deepcopy(tiny_sdxl)
    run_training(ws, components=components, latents=latents, progress=False)
    return ws, recipe, components


def test_a_lora_stage_trains_only_its_adapters_and_states_hold_only_them(tmp_path, tiny_sdxl):
    ws, latents = make_training_workspace(tmp_path / "ws", _lora_recipe(epochs=1), n=4)
    components = copy.deepcopy(tiny_sdxl)
    summary = run_training(ws, components=components, latents=latents, progress=False)
    state = ws.root / summary.ran[0]["final_state"]
    # the state: LoRA A/B pairs of U-Net and encoder 1 (lr > 0) and their optimizer, nothing else
    assert not (state / "text_encoder_2.safetensors").exists()
    saved = {n: load_file(state / f"{n}.safetensors") for n in ("unet", "text_encoder")}
    for tensors in saved.values():
        assert tensors and all(".lora_A.default." in k or ".lora_B.default." in k for k in tensors)
    assert len(saved["text_encoder"]) == 2 * 72  # q/k/v/out + fc1/fc2 of 12 layers
    optimizer = json.loads((state / "optimizer.json").read_text())
    # every adapter is in the optimizer (encoder 1's last layer, unused by SDXL, has no state)
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == 2 * (788 + 72)
    assert len(optimizer["state"]) == 2 * (788 + 72 - 6)
    assert all(bool(t.abs().sum()) for k, t in saved["unet"].items() if ".lora_B." in k)
    # after the stage the modules are plain again, with the LoRA merged into targeted weights
    after, before = components.unet.state_dict(), tiny_sdxl.unet.state_dict()
    assert after.keys() == before.keys()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight" in moved
    assert all(k.endswith(".weight") for k in moved)  # biases, norms: untouched
    assert "conv_in.weight" not in moved and "time_embedding.linear_1.weight" not in moved
    te2, te2_base = components.text_encoder_2.state_dict(), tiny_sdxl.text_encoder_2.state_dict()
    assert all(torch.equal(te2[k], te2_base[k]) for k in te2)  # lr 0: frozen


def _states_equal(a: Path, b: Path) -> list[str]:
    diff = []
    for file in sorted(a.glob("*.safetensors")):
        if file.name == "rng.safetensors":
            continue
        x, y = load_file(file), load_file(b / file.name)
        assert x.keys() == y.keys(), file.name
        diff += [f"{file.name}:{k}" for k in x if not torch.equal(x[k], y[k])]
    return diff


@pytest.mark.slow
def test_stages_chain_both_ways_and_a_later_run_rebuilds_the_merged_weights(tmp_path, tiny_sdxl):
    # full -> LoRA -> full: in one run, and stage by stage, each run from the base model, where
    # the finished stages are rebuilt from their final states (the LoRA merged from its state)
    def recipe():
        r = tiny_train_recipe(epochs=1, lr_text_encoder_2=0.0)
        full = r.train.stages[0]
        lora = StageConfig(
            **{**full.model_dump(), "name": "lora", "method": "lora", "lora": {"rank": 2}},
        )
        r.train.stages = [full, lora, StageConfig(**{**full.model_dump(), "name": "after"})]
        return r

    ws, lat = make_training_workspace(tmp_path / "once", recipe(), n=2)
    once = copy.deepcopy(tiny_sdxl)
    run_training(ws, components=once, latents=lat, progress=False)
    steps, lat2 = make_training_workspace(tmp_path / "steps", recipe(), n=2)
    for name in ("main", "lora", "after"):
        run_training(steps, stage=name, components=copy.deepcopy(tiny_sdxl), latents=lat2,
                     progress=False)  # fmt: skip
    for name in ("main", "lora", "after"):
        a = next((ws.root / f"runs/run1/{name}/states").iterdir())
        b = next((steps.root / f"runs/run1/{name}/states").iterdir())
        assert _states_equal(a, b) == [], name
    # the LoRA stage trained on the full stage's weights: its merge differs from the base's
    lora_state = load_file(next((ws.root / "runs/run1/lora/states").iterdir()) / "unet.safetensors")
    assert all(".lora_" in k for k in lora_state)
    main_unet = load_file(next((ws.root / "runs/run1/main/states").iterdir()) / "unet.safetensors")
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert not torch.equal(main_unet[key], tiny_sdxl.unet.state_dict()[key])


def test_export_writes_the_golden_kohya_names_and_ss_metadata(trained):
    from tagtune.models.hashes import file_hashes
    from tagtune.train.export import export_model

    ws, recipe, _ = trained
    result = export_model(ws, dtype="fp32")
    assert result.path == ws.out_dir / "tagtune-sdxl-lora.safetensors"
    with safe_open(result.path, "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    gold = _golden()
    assert names == set(gold)  # U-Net attention, feed-forward, LoCon convs; both encoders
    for name, (_, down, up) in gold.items():
        assert shapes[f"{name}.alpha"] == ()
        d, u = shapes[f"{name}.lora_down.weight"], shapes[f"{name}.lora_up.weight"]
        kernel = down.split("x")[2:]  # shapes scaled for the tiny model: rank and kernel kept
        rank = 2 if kernel == ["3", "3"] else 4
        assert (d[0], [str(k) for k in d[2:]]) == (rank, kernel), name
        assert (u[1], len(u)) == (rank, len(up.split("x"))), name
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.title"] == recipe.project.name
    expected = {
        "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
        "ss_network_args": json.dumps({"conv_dim": "2", "conv_alpha": "2.0"}),
        "ss_base_model_version": "sdxl_base_v1-0", "ss_steps": "2", "ss_epoch": "1",
        "ss_num_epochs": "1", "ss_learning_rate": "0.01", "ss_unet_lr": "0.01",
        "ss_text_encoder_lr": "0.01", "ss_resolution": "(1024, 1024)",
        "ss_training_comment": "synthetic shapes", "ss_output_name": "tagtune-sdxl-lora",
        "ss_sd_model_name": "tiny-sdxl(seed=0)", "ss_num_train_images": "4", "ss_seed": "42",
    }  # fmt: skip
    assert {k: meta.get(k) for k in expected} == expected
    frequency = json.loads(meta["ss_tag_frequency"])
    assert list(frequency) == ["1_main"] and frequency["1_main"] == {
        "blue sky": 4,
        "red circle": 3,
        "smile": 3,
        "green square": 2,
        "long hair": 2,
        "outdoors": 1,
        "solo": 1,
    }
    # sd-scripts' sshs_model_hash is the hash of the tensor bytes: what `tagtune hash` calls AutoV3
    hashes = file_hashes(result.path)
    assert meta["sshs_model_hash"] == hashes["autov3"] == result.hashes["autov3"]
    # and sshs_legacy_hash the legacy hash of the file serialised with its ss_* keys only
    blob = save(load_file(result.path), {k: v for k, v in meta.items() if k.startswith("ss_")})
    assert meta["sshs_legacy_hash"] == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    record = json.loads((ws.root / "runs/run1/run.json").read_text())["export"]
    assert record["lora"]["rank"] == 4 and record["lora"]["starts_from"] == ["base"]
    run = json.loads((ws.root / "runs/run1/run.json").read_text())
    assert meta["modelspec.date"] == run["stages"][0]["finished_at"]  # reproducible bytes


def _outputs(components) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500])
    context = torch.randn(2, 77, 80, generator=g)
    added = {
        "text_embeds": torch.randn(2, 40, generator=g),
        "time_ids": torch.randn(2, 6, generator=g),
    }
    ids = torch.randint(0, 49408, (2, 77), generator=g)
    with torch.no_grad():
        outs = [components.unet(x, t, context, added_cond_kwargs=added).sample]
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(components, name).eval()
            outs.append(encoder(ids, output_hidden_states=True).hidden_states[-2])
    return outs


def test_export_merged_into_the_base_equals_the_trained_adapters_in_memory(trained, tiny_sdxl):
    from tagtune.models.lora_format import apply_lora, read_lora
    from tagtune.train.export import export_model
    from tagtune.train.lora import add_adapters
    from tagtune.train.state import load_weights, trained_weights

    ws, recipe, _ = trained
    out = ws.out_dir / "merge-check.safetensors"
    modules, _ = read_lora(export_model(ws, out=out, dtype="fp32").path)
    merged = copy.deepcopy(tiny_sdxl)
    assert len(apply_lora(merged, [(modules, 1.0)])) == len(_golden())
    # in memory: the base with the trained peft adapters in place (unmerged)
    live = copy.deepcopy(tiny_sdxl)
    state = next((ws.root / "runs/run1/main/states").iterdir())
    for name in add_adapters(live, recipe.train.stages[0]):
        module = getattr(live, name)
        assert load_weights(state, name, module, keys=trained_weights(module).keys())
    base = _outputs(tiny_sdxl)
    for a, b, c in zip(_outputs(merged), _outputs(live), base, strict=True):
        assert (a - b).abs().max() < MERGE_TOLERANCE
        assert (b - c).abs().max() > 1e-2  # the LoRA changes the outputs
    # and the stage chain's own merge (what `tagtune export` of a later full stage uses)
    chained = _outputs(trained[2])
    assert all(
        (a - b).abs().max() < MERGE_TOLERANCE
        for a, b in zip(chained, _outputs(merged), strict=True)
    )


def test_export_refuses_a_dora_stage(tmp_path, tiny_sdxl):
    from tagtune.train.export import export_model

    recipe = _lora_recipe(epochs=1, lora={"rank": 2, "dora": True})
    ws, latents = make_training_workspace(tmp_path / "ws", recipe, n=2)
    run_training(ws, components=copy.deepcopy(tiny_sdxl), latents=latents, progress=False)
    with pytest.raises(TrainingError, match="DoRA") as err:
        export_model(ws)
    assert err.value.field == "lora.dora"
    assert not (ws.out_dir / "tagtune-sdxl-lora.safetensors").exists()


def test_a_lora_table_on_a_full_stage_is_an_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match='a \\[lora\\] table needs method = "lora"'):
        StageConfig(name="main", lora={"rank": 8})
    assert StageConfig(name="main", method="lora").lora is None  # defaults apply


def test_a_lora_stage_refuses_deepspeed(tiny_sdxl):
    from tagtune.train.lora import add_adapters

    stage = StageConfig(name="main", method="lora")
    with pytest.raises(TrainingError, match="without DeepSpeed"):
        add_adapters(copy.deepcopy(tiny_sdxl), stage, deepspeed=True)


def test_cli_export_hash_and_card_of_a_lora(trained):
    from typer.testing import CliRunner

    from tagtune.cli.main import app
    from tagtune.core.catalog import open_catalog

    ws = trained[0]
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(ws.root), "--force", "--json"])
    assert result.exit_code == 0, result.output
    path = Path(json.loads(result.output.strip().splitlines()[-1])["path"])
    with safe_open(path, "pt") as f:  # fp16, the recipe's export dtype
        meta = f.metadata()
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    hashed = runner.invoke(app, ["hash", str(path), "--json"])
    assert json.loads(hashed.output)[str(path)]["autov3"] == meta["sshs_model_hash"]
    with open_catalog(ws.catalog_path) as con:
        con.execute(
            "INSERT INTO recommended_tags (subset, rank, tag, jaccard, count) "
            "VALUES ('all', 1, 'blue sky', 0.4, 4)"
        )
    card = runner.invoke(app, ["card", str(ws.root), "--force"])
    assert card.exit_code == 0, card.output
    text = (ws.out_dir / "tagtune-sdxl-lora.md").read_text()
    assert "| Type | LoRA (kohya format), SDXL 1.0; rank 4, alpha 2 |" in text
    assert "| LoRA for | tiny-sdxl(seed=0) |" in text
    assert "`<lora:tagtune-sdxl-lora:1>`" in text
    assert f"`{meta['sshs_model_hash']}`" in text  # AutoV3 among the file's hashes


def test_export_every_epoch_of_a_lora_stage_writes_kohya_loras(tmp_path, tiny_sdxl):
    from tagtune.models.lora_format import read_lora

    recipe = _lora_recipe(epochs=2, lora={"rank": 2}, lr_text_encoder=0.0)
    recipe.train.export_every_epoch = True
    ws, latents = make_training_workspace(tmp_path / "ws", recipe, n=2)
    run_training(ws, components=copy.deepcopy(tiny_sdxl), latents=latents, progress=False)
    exports = sorted((ws.root / "runs/run1/main/exports").iterdir())
    assert [p.name for p in exports] == ["tagtune-sdxl-main-e001.safetensors",
                                         "tagtune-sdxl-main-e002.safetensors"]  # fmt: skip
    modules, meta = read_lora(exports[-1])
    assert len(modules) == 140 + 582  # U-Net attention + feed-forward
    assert meta["ss_network_dim"] == "2" and meta["ss_epoch"] == "2"
    # the last epoch's file is the stage's LoRA, as `tagtune export` writes it
    state = load_file(ws.root / "runs/run1/main/states/step-2/unet.safetensors")
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.default.weight"
    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert torch.equal(modules[name].up.float(), state[key].half().float())


@pytest.mark.slow
def test_a_lora_stage_learns_on_held_out_images(tmp_path, tiny_sdxl):
    # LoCon rank 16 on the theme collection (40 images of two colour themes, 8 held out).
    # Measured (2 cores, load ~7): held-out loss 1.1086 -> 0.5685 after 32 steps, 0.5595
    # after 64; the conditioning gap stays near 0 (-0.0003, -0.0018), where full training
    # opens it to 18% in 144 steps (tests/test_learning.py): measured, not asserted to open.
    from tagtune.synthetic.runs import make_theme_workspace

    lora = {"rank": 16, "alpha": 32.0, "targets": ["attention", "feed_forward", "convs"]}
    recipe = tiny_train_recipe(
        epochs=4, batch_size=4, lr_unet=1e-2, lr_text_encoder=1e-3, lr_text_encoder_2=1e-3,
        scheduler="constant", warmup_ratio=0.0, min_snr_gamma=5.0, method="lora", lora=lora,
    )  # fmt: skip
    recipe.validation.count = 8
    recipe.validation.every_n_epochs = 4
    components = copy.deepcopy(tiny_sdxl)
    ws, latents = make_theme_workspace(tmp_path / "ws", recipe, components.vae, n=40)
    stage = run_training(ws, components=components, latents=latents, progress=False).ran[0]
    start, end = stage["validation"]["evaluations"][0], stage["validation"]["evaluations"][-1]
    assert (start["step"], end["step"]) == (0, 32)
    print(
        f"LoRA learning (start, end): {[(start[k], end[k]) for k in ('loss', 'conditioning_gap')]}"
    )
    assert end["loss"] < 0.7 * start["loss"]
    assert abs(start["conditioning_gap"]) < 0.01 and abs(end["conditioning_gap"]) < 1.0
    logs = list((ws.root / "runs/run1/main/logs").iterdir())
    assert logs  # TensorBoard events, as for a full stage


def test_a_state_from_before_lora_stages_still_resumes_and_a_method_change_does_not():
    from tagtune.train.loop import check_resumable

    stage = StageConfig(name="main")
    old = {k: v for k, v in stage.model_dump(mode="json").items() if k not in ("method", "lora")}
    meta = {"steps_per_epoch": 3, "settings": old, "seed": 42}
    check_resumable(meta, 3, Path("state"), stage, 42)  # keys added since: their defaults
    lora = stage.model_copy(update={"method": "lora"})
    with pytest.raises(TrainingError, match="method 'full' -> 'lora'"):
        check_resumable(meta, 3, Path("state"), lora, 42)
