"""SDXL text conditioning, as A1111, kohya and diffusers' SDXL pipeline agree on it.

- Each prompt is tokenized by both CLIP tokenizers without special tokens, split into
  75-token chunks, and each chunk is wrapped as [BOS] + 75 tokens + [EOS] + padding = 77
  (A1111's long-prompt scheme). A batch uses as many chunks as its longest prompt needs, capped
  at `max_token_length / 75`; shorter prompts get empty chunks ([BOS][EOS] + padding).
- Each chunk goes through both encoders; the hidden states of the layer before the last
  (clip skip 1 in A1111's numbering = SDXL's default penultimate layer) are concatenated on the
  feature axis (768 + 1280 in the real model), chunks are concatenated on the token axis.
- The pooled embedding is encoder 2's projected output (`text_embeds`) of the first chunk.
- Emphasis weights (from `(tag:1.2)` syntax) multiply each token's hidden state, after which the
  chunk's original mean is restored, per encoder, as A1111 does.

Gradients flow through the encoders; wrap calls in `torch.no_grad()` for frozen encoders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tagtune.core.errors import InputError

CHUNK = 75
Segments = list[tuple[str, float]]
Prompt = str | Segments


@dataclass
class TokenizedPrompts:
    """Token ids of a batch for both tokenizers, as [batch, chunks, 77], and emphasis weights."""

    ids_1: torch.Tensor
    ids_2: torch.Tensor
    weights: torch.Tensor | None  # [batch, chunks, 77] or None when every weight is 1

    @property
    def chunks(self) -> int:
        """Number of 77-token chunks per prompt in this batch."""
        return int(self.ids_1.shape[1])


def _segments(prompt: Prompt) -> Segments:
    return [(prompt, 1.0)] if isinstance(prompt, str) else list(prompt)


def _tokens(tokenizer, prompt: Prompt) -> tuple[list[int], list[float]]:
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in _segments(prompt):
        if not text:
            continue
        part = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        ids += part
        weights += [float(weight)] * len(part)
    return ids, weights


def chunks_needed(n_tokens: int, max_token_length: int = 225) -> int:
    """Chunks of 75 tokens a prompt of `n_tokens` needs, at least 1, at most max_token_length/75."""
    return max(1, min(math.ceil(n_tokens / CHUNK), max_token_length // CHUNK))


def _chunked(ids: list[int], weights: list[float], n_chunks: int, bos: int, eos: int, pad: int):
    out_ids, out_w = [], []
    for c in range(n_chunks):
        part = ids[c * CHUNK : (c + 1) * CHUNK]
        pw = weights[c * CHUNK : (c + 1) * CHUNK]
        fill = CHUNK - len(part)
        out_ids.append([bos, *part, eos] + [pad] * fill)
        out_w.append([1.0, *pw, 1.0] + [1.0] * fill)
    return out_ids, out_w


def tokenize_prompts(
    tokenizer_1,
    tokenizer_2,
    prompts: Sequence[Prompt],
    max_token_length: int = 225,
    min_chunks: int = 1,
) -> TokenizedPrompts:
    """Tokenize a batch for both encoders into [batch, chunks, 77] id tensors (A1111 chunking)."""
    if max_token_length not in (75, 150, 225):
        raise ValueError(f"max_token_length must be 75, 150 or 225, got {max_token_length}")
    toks_1 = [_tokens(tokenizer_1, p) for p in prompts]
    toks_2 = [_tokens(tokenizer_2, p) for p in prompts]
    n_chunks = max(
        [min_chunks] + [chunks_needed(len(i), max_token_length) for i, _ in toks_1 + toks_2]
    )
    n_chunks = min(n_chunks, max(min_chunks, max_token_length // CHUNK))

    def build(tokenizer, toks):
        ids, ws = [], []
        for i, w in toks:
            ci, cw = _chunked(
                i,
                w,
                n_chunks,
                tokenizer.bos_token_id,
                tokenizer.eos_token_id,
                tokenizer.pad_token_id,
            )
            ids.append(ci)
            ws.append(cw)
        return torch.tensor(ids, dtype=torch.long), torch.tensor(ws, dtype=torch.float32)

    ids_1, w_1 = build(tokenizer_1, toks_1)
    ids_2, _ = build(tokenizer_2, toks_2)
    weights = None if bool((w_1 == 1.0).all()) else w_1
    return TokenizedPrompts(ids_1=ids_1, ids_2=ids_2, weights=weights)


def _apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    original_mean = hidden.mean(dim=(1, 2), keepdim=True)
    hidden = hidden * weights.to(hidden.dtype).unsqueeze(-1)
    new_mean = hidden.mean(dim=(1, 2), keepdim=True)
    return hidden * (original_mean / new_mean)


def check_clip_skip(text_encoder, text_encoder_2, clip_skip: int) -> None:
    """Clip skip counts encoder layers back from the last (A1111 numbering, 1 = SDXL's
    default): from 1 to the layer count of the shallower encoder (12 for SDXL), else an
    InputError naming the limit."""
    layers = min(text_encoder.config.num_hidden_layers, text_encoder_2.config.num_hidden_layers)
    if type(clip_skip) is not int or not 1 <= clip_skip <= layers:
        raise InputError(
            f"must be an integer from 1 to {layers} (the text encoders have {layers} layers)",
            field="--clip-skip",
            value=clip_skip,
        )


def encode_tokens(
    text_encoder, text_encoder_2, tokens: TokenizedPrompts, clip_skip: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode tokenized prompts: ([B, 77*chunks, w1+w2] hidden states, [B, projection] pooled)."""
    check_clip_skip(text_encoder, text_encoder_2, clip_skip)
    layer = -(clip_skip + 1)
    device_1 = next(text_encoder.parameters()).device
    device_2 = next(text_encoder_2.parameters()).device
    embeds, pooled = [], None
    for c in range(tokens.chunks):
        out_1 = text_encoder(tokens.ids_1[:, c].to(device_1), output_hidden_states=True)
        out_2 = text_encoder_2(tokens.ids_2[:, c].to(device_2), output_hidden_states=True)
        h_1 = out_1.hidden_states[layer]
        h_2 = out_2.hidden_states[layer].to(h_1.device)
        if tokens.weights is not None:
            w = tokens.weights[:, c].to(h_1.device)
            h_1, h_2 = _apply_emphasis(h_1, w), _apply_emphasis(h_2, w)
        embeds.append(torch.cat([h_1, h_2.to(h_1.dtype)], dim=-1))
        if c == 0:
            pooled = out_2.text_embeds
    return torch.cat(embeds, dim=1), pooled


def encode_prompts(
    components,
    prompts: Sequence[Prompt],
    max_token_length: int = 225,
    clip_skip: int = 1,
    min_chunks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL prompt embeddings and pooled embeddings for a batch of prompts (see module docs).

    Each prompt is a string or a list of (text, weight) segments from the emphasis parser.
    """
    tokens = tokenize_prompts(
        components.tokenizer, components.tokenizer_2, prompts, max_token_length, min_chunks
    )
    return encode_tokens(components.text_encoder, components.text_encoder_2, tokens, clip_skip)


def sdxl_time_ids(
    original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL micro-conditioning: (orig h, orig w, crop top, crop left, target h, target w)."""
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)
