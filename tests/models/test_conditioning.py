"""SDXL conditioning: chunking, layer choice, pooled output and emphasis as A1111 and diffusers do it."""

from __future__ import annotations

import torch

from tagtune.models.conditioning import (
    chunks_needed,
    encode_prompts,
    sdxl_time_ids,
    tokenize_prompts,
)

BOS, EOS = 49406, 49407


def test_chunk_counts():
    assert [chunks_needed(n) for n in (0, 1, 75, 76, 150, 151, 225, 400)] == [
        1,
        1,
        1,
        2,
        2,
        3,
        3,
        3,
    ]
    assert chunks_needed(400, max_token_length=75) == 1


def test_short_prompt_is_one_chunk_with_each_tokenizers_padding(tiny_sdxl):
    t = tokenize_prompts(tiny_sdxl.tokenizer, tiny_sdxl.tokenizer_2, ["a photo of a cat"])
    assert t.ids_1.shape == (1, 1, 77) and t.weights is None
    assert t.ids_1[0, 0, :7].tolist() == [BOS, 320, 1125, 539, 320, 2368, EOS]
    assert t.ids_1[0, 0, 7:].eq(EOS).all()  # tokenizer 1 pads with <|endoftext|>
    assert t.ids_2[0, 0, 7:].eq(0).all()  # tokenizer 2 pads with "!" (id 0), as SDXL does


def test_long_prompt_is_split_into_wrapped_75_token_chunks(tiny_sdxl):
    prompt = ", ".join(["blue sky"] * 40)  # 40*2 words + 39 commas = 119 tokens
    t = tokenize_prompts(tiny_sdxl.tokenizer, tiny_sdxl.tokenizer_2, [prompt, "cat"])
    assert t.ids_1.shape == (2, 2, 77)
    flat = tiny_sdxl.tokenizer(prompt, add_special_tokens=False).input_ids
    assert len(flat) == 119
    assert t.ids_1[0, 0].tolist() == [BOS, *flat[:75], EOS]
    assert t.ids_1[0, 1, : 1 + 44 + 1].tolist() == [BOS, *flat[75:], EOS]
    assert t.ids_1[1, 1, :2].tolist() == [BOS, EOS]  # the short prompt gets an empty chunk


def test_embeddings_are_penultimate_states_of_both_encoders_and_pooled_of_encoder_2(tiny_sdxl):
    m = tiny_sdxl
    with torch.no_grad():
        embeds, pooled = encode_prompts(m, ["1girl, smile"])
        ids_1 = m.tokenizer(
            "1girl, smile", padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        ids_2 = m.tokenizer_2(
            "1girl, smile", padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        h1 = m.text_encoder(ids_1, output_hidden_states=True).hidden_states[-2]
        out2 = m.text_encoder_2(ids_2, output_hidden_states=True)
    assert embeds.shape == (1, 77, 32 + 48) and pooled.shape == (1, 40)
    assert torch.equal(embeds, torch.cat([h1, out2.hidden_states[-2]], dim=-1))
    assert torch.equal(pooled, out2.text_embeds)


def test_clip_skip_2_takes_one_layer_earlier(tiny_sdxl):
    with torch.no_grad():
        e1, _ = encode_prompts(tiny_sdxl, ["smile"], clip_skip=1)
        e2, _ = encode_prompts(tiny_sdxl, ["smile"], clip_skip=2)
        ids = tiny_sdxl.tokenizer(
            "smile", padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        h = tiny_sdxl.text_encoder(ids, output_hidden_states=True).hidden_states[-3]
    assert not torch.equal(e1, e2)
    assert torch.equal(e2[..., :32], h)


def test_emphasis_scales_tokens_and_keeps_the_mean(tiny_sdxl):
    with torch.no_grad():
        plain, _ = encode_prompts(tiny_sdxl, ["smile"])
        same, _ = encode_prompts(tiny_sdxl, [[("smile", 1.0)]])
        strong, _ = encode_prompts(tiny_sdxl, [[("smile", 1.5)]])
    assert torch.equal(plain, same)
    assert not torch.allclose(plain, strong)
    assert torch.allclose(plain[..., :32].mean(), strong[..., :32].mean(), atol=1e-5)


def test_min_chunks_pads_uncond_to_cond_length(tiny_sdxl):
    with torch.no_grad():
        embeds, _ = encode_prompts(tiny_sdxl, [""], min_chunks=3)
    assert embeds.shape[1] == 3 * 77


def test_time_ids_order():
    assert sdxl_time_ids((1216, 832), (0, 16), (1024, 1024)).tolist() == [
        1216,
        832,
        0,
        16,
        1024,
        1024,
    ]
