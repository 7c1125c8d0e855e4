"""Infotext: A1111's layout, parsed back equal, carried in the PNG `parameters` chunk."""

from __future__ import annotations

import pytest
from PIL import Image

from tagtune.core.errors import InputError
from tagtune.generate.infotext import (
    Infotext,
    format_infotext,
    parse_infotext,
    read_png_infotext,
    write_png,
)

BASIC = Infotext(
    prompt="1girl, long hair, smile, blue sky",
    negative="worst quality",
    steps=28,
    sampler="euler_a",
    cfg=7.0,
    seed=1234,
    width=832,
    height=1216,
    model_hash="0123456789",
    model="tagtune-sdxl",
)


def test_layout_is_a1111s():
    assert format_infotext(BASIC) == (
        "1girl, long hair, smile, blue sky\n"
        "Negative prompt: worst quality\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 832x1216, "
        "Model hash: 0123456789, Model: tagtune-sdxl"
    )


@pytest.mark.parametrize(("clip_skip", "shown"), [(1, False), (2, True), (3, True)])
def test_clip_skip_only_when_above_one(clip_skip, shown):
    text = format_infotext(Infotext(prompt="smile", clip_skip=clip_skip))
    assert (f"Clip skip: {clip_skip}" in text) is shown


ROUND_TRIPS = [
    BASIC,
    Infotext(prompt="1girl,\nsmile,\n(blue sky:1.2)", negative="worst quality,\nlow quality"),
    Infotext(prompt="a: b, c", negative="", sampler="dpmpp_2m_karras", cfg=4.5, clip_skip=2),
    Infotext(prompt="", negative="x", seed=2**32 + 5, model="name, with: comma"),
    Infotext(prompt=r"artist_\(name\), smile", extra={"Hires upscale": "2", "Note": 'a "b", c'}),
    Infotext(prompt="smile", sampler="some new sampler"),
]


@pytest.mark.parametrize("info", ROUND_TRIPS)
def test_parse_of_format_is_identity(info):
    assert parse_infotext(format_infotext(info)) == info


def test_parses_a1111_text_with_extra_keys():
    text = (
        "masterpiece, 1girl\nNegative prompt: worst quality\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 5.5, Seed: 7, Size: 1024x1024, "
        'Model hash: abcdef0123, Model: sdxl, Lora hashes: "x: 1, y: 2", Version: v1.10.1'
    )
    info = parse_infotext(text)
    assert (info.prompt, info.negative, info.sampler, info.cfg, info.seed) == (
        "masterpiece, 1girl",
        "worst quality",
        "dpmpp_2m_karras",
        5.5,
        7,
    )
    assert info.extra == {"Lora hashes": "x: 1, y: 2", "Version": "v1.10.1"}


def test_text_without_parameter_line_is_all_prompt():
    info = parse_infotext("just a prompt, smile")
    assert (info.prompt, info.steps) == ("just a prompt, smile", 28)


def test_bad_size_names_the_field():
    with pytest.raises(InputError) as exc:
        parse_infotext("x\nSteps: 2, Sampler: Euler, Size: big")
    assert str(exc.value) == "Size = 'big': infotext size is not WxH"


def test_png_chunk_round_trip(tmp_path):
    path = write_png(Image.new("RGB", (8, 8), "red"), tmp_path / "a.png", BASIC)
    assert Image.open(path).info["parameters"] == format_infotext(BASIC)
    assert read_png_infotext(path) == BASIC


def test_png_without_infotext_is_a_clear_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(InputError) as exc:
        read_png_infotext(tmp_path / "plain.png")
    assert str(exc.value) == f"{tmp_path / 'plain.png'}: the image has no `parameters` infotext"
