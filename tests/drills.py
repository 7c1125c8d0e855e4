"""Checks shared by the multi-process drills (DDP and DeepSpeed ZeRO-2)."""

from __future__ import annotations

import torch


def assert_like_one_process(
    rank0: dict[str, torch.Tensor], single: torch.nn.Module, base: torch.nn.Module, name: str
) -> None:
    """A multi-process run's weights against one process with the same global batch.

    Summing (or reduce-scattering) over ranks adds in another order than one batch does;
    AdamW turns that into small differences where gradients are ~0 (biases before
    GroupNorm). Nearly all weights agree, and the differences are far below what training moved.
    """
    ref, start = single.state_dict(), base.state_dict()
    diff = torch.cat([(rank0[k] - ref[k]).flatten() for k in rank0]).abs()
    moved = torch.cat([(start[k] - ref[k]).flatten() for k in rank0]).abs()
    assert diff.mean() < 1e-3 * moved.mean(), name
    assert (diff > 1e-5).float().mean() < 1e-3, name
