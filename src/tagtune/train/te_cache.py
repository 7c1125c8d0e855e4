"""Text-encoder outputs: encoded every step, or cached per caption when the recipe allows it.

Caching is allowed only when both encoders are frozen and captions never change (the recipe
validator enforces it). Chunks of a prompt are encoded independently, so a batch built from
per-caption cache entries, padded with the empty chunk's embedding, equals joint encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from tagtune.models.conditioning import CHUNK
from tagtune.recipe.model import StageConfig
from tagtune.train.loss import encode_captions

TOKENS_PER_CHUNK = CHUNK + 2


class Encoder:
    """Callable captions -> (prompt_embeds, pooled) for a stage."""

    def __init__(
        self,
        components: Any,
        stage: StageConfig,
        encode_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.components = components
        self.max_token_length = stage.max_token_length
        self.train_encoders = stage.trains_text_encoders
        self.cached = stage.cache_text_encoder_outputs and not stage.trains_text_encoders
        self.encode_fn = encode_fn
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_captions(
            self.components, captions, self.max_token_length, self.train_encoders, self.encode_fn
        )

    def __call__(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of a batch of captions."""
        if not self.cached:
            return self._encode(captions)
        for c in {*captions, ""}:
            if c not in self.cache:
                e, p = self._encode([c])
                self.cache[c] = (e[0], p[0])
        width = max(self.cache[c][0].shape[0] for c in captions)
        empty = self.cache[""][0][:TOKENS_PER_CHUNK]
        rows = []
        for c in captions:
            e = self.cache[c][0]
            pad = (width - e.shape[0]) // TOKENS_PER_CHUNK
            rows.append(torch.cat([e, *([empty] * pad)]) if pad else e)
        return torch.stack(rows), torch.stack([self.cache[c][1] for c in captions])
