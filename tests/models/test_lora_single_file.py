"""Where kohya LoRA modules lie in a single-file checkpoint (the golden list's target column)."""

from __future__ import annotations

from pathlib import Path

from tagtune.models.configs import sdxl_base_configs
from tagtune.models.lora_single_file import file_targets

GOLDEN = Path(__file__).parents[1] / "data" / "sdxl-lora-keys.tsv"


def test_full_size_file_targets_match_the_golden_list():
    gold = {}
    for line in GOLDEN.read_text().splitlines():
        if not line.startswith("#") and not line.startswith("name\t"):
            name, _group, down, up, target = line.split("\t")
            gold[name] = (target, down, up)
    targets = file_targets(sdxl_base_configs(), convs=True)
    assert set(targets) == set(gold)
    for name, t in targets.items():
        assert t.key == gold[name][0], name
        out, inp, *kernel = t.shape
        assert gold[name][1] == "x".join(["r", str(inp), *map(str, kernel)]), name
    qkv = [targets[f"lora_te2_text_model_encoder_layers_5_self_attn_{p}_proj"] for p in "qkv"]
    assert [t.rows for t in qkv] == [(0, 1280), (1280, 2560), (2560, 3840)]
    assert targets["lora_te2_text_model_encoder_layers_5_mlp_fc1"].rows is None
