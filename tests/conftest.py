"""Shared fixtures: tiny data built once per test run."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_sdxl():
    """A tiny random SDXL model (seed 0), built once; tests must not modify it in place."""
    import torch

    torch.set_num_threads(1)
    from tagtune.models.tiny import build_tiny_sdxl

    return build_tiny_sdxl(seed=0)
