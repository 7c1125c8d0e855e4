"""Write tests/data/sdxl-lora-keys.tsv: every kohya SDXL LoRA module name, from the single-file
key list tests/data/sdxl-base-keys.tsv by sd-scripts' targeting rule (not by tagtune's code).

Run: python scripts/sdxl_lora_keys.py > tests/data/sdxl-lora-keys.tsv
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNET = "model.diffusion_model."
TE1 = "conditioner.embedders.0.transformer."
TE2 = "conditioner.embedders.1.model.transformer.resblocks."
ATTENTION = re.compile(r"^(input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)\.")
RESNET = re.compile(
    r"^(input_blocks\.\d+\.0|middle_block\.[02]|output_blocks\.\d+\.0)\."
    r"(in_layers\.2|out_layers\.3|emb_layers\.1|skip_connection)$"
)
SAMPLER = re.compile(r"^(input_blocks\.\d+\.0\.op|output_blocks\.\d+\.[12]\.conv)$")
TE_LAYER = re.compile(
    r"^text_model\.encoder\.layers\.\d+\.(self_attn\.[qkvo]\w*_proj|mlp\.fc[12])$"
)
TE2_RENAMES = {
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}

HEADER = """\
# Kohya SDXL LoRA module names (sd-scripts sdxl_train_network.py layout; A1111, Forge and ComfyUI
# load these), for a full-size SDXL 1.0 base. Made by scripts/sdxl_lora_keys.py from the
# single-file key list tests/data/sdxl-base-keys.tsv (derived from the real configs) by
# sd-scripts' targeting rule, independently of tagtune's LoRA code:
# - unet-attn: every Linear of a U-Net transformer block (input_blocks.N.1, middle_block.1,
#   output_blocks.N.1): proj_in/out, attn1/attn2 to_q/k/v/to_out.0, ff.net.0.proj, ff.net.2;
# - unet-conv (LoCon, with convs): the resnets' in_layers.2, out_layers.3 (3x3), emb_layers.1
#   (linear), skip_connection (1x1), the downsamplers' op and upsamplers' conv (3x3);
# - te1/te2: self_attn q/k/v/out_proj and mlp fc1/fc2 of every encoder layer (encoder 2 in
#   transformers naming, q/k/v split out of OpenCLIP's in_proj_weight).
# name = lora_unet_ + single-file path / lora_teN_text_model_ + transformers path, dots as
# underscores; cross-checked against ComfyUI's comfy/lora.py key maps (model_lora_keys_unet
# maps lora_unet_ + every diffusion_model weight path; model_lora_keys_clip maps lora_te1_/
# lora_te2_text_model_encoder_layers_N_ + self_attn_{q,k,v,out}_proj / mlp_fc1 / mlp_fc2).
# Shapes at rank r: lora_down [r, in(, kh, kw)], lora_up [out, r(, 1, 1)]; alpha is 0-d.
# target is the single-file weight the module changes.
"""


def _shapes(shape: list[int]) -> tuple[str, str]:
    out, inp, *kernel = shape
    down = "x".join(["r", str(inp), *map(str, kernel)])
    up = "x".join([str(out), "r", *(["1", "1"] if kernel else [])])
    return down, up


def main() -> None:
    rows: list[tuple[str, str, str, list[int]]] = []
    for line in (ROOT / "tests/data/sdxl-base-keys.tsv").read_text().splitlines():
        if line.startswith("#") or line.startswith("key\t"):
            continue
        key, shape_text, _ = line.split("\t")
        if shape_text == "scalar":
            continue
        shape = [int(d) for d in shape_text.split("x")]
        if key.startswith(UNET) and key.endswith(".weight"):
            path = key[len(UNET) : -len(".weight")]
            if ATTENTION.match(path) and len(shape) == 2:
                rows.append(("unet-attn", "lora_unet_" + path.replace(".", "_"), key, shape))
            elif RESNET.match(path) or SAMPLER.match(path):
                rows.append(("unet-conv", "lora_unet_" + path.replace(".", "_"), key, shape))
        elif key.startswith(TE1) and key.endswith(".weight"):
            path = key[len(TE1) : -len(".weight")]
            if TE_LAYER.match(path):
                rows.append(("te1", "lora_te1_" + path.replace(".", "_"), key, shape))
        elif key.startswith(TE2) and key.endswith("weight"):
            idx, _, rest = key[len(TE2) :].partition(".")
            layer = f"text_model.encoder.layers.{idx}."
            if rest == "attn.in_proj_weight":
                width = shape[0] // 3
                for p in ("q_proj", "k_proj", "v_proj"):
                    name = "lora_te2_" + (layer + "self_attn." + p).replace(".", "_")
                    rows.append(("te2", name, key, [width, shape[1]]))
            elif rest.removesuffix(".weight") in TE2_RENAMES:
                mod = TE2_RENAMES[rest.removesuffix(".weight")]
                rows.append(("te2", "lora_te2_" + (layer + mod).replace(".", "_"), key, shape))
    print(HEADER, end="")
    print("name\tgroup\tlora_down\tlora_up\ttarget")
    for group, name, key, shape in sorted(rows, key=lambda r: r[1]):
        down, up = _shapes(shape)
        print(f"{name}\t{group}\t{down}\t{up}\t{key}")


if __name__ == "__main__":
    main()
