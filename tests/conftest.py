"""Shared fixtures: tiny data built once per test run."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """`tagtune demo FOLDER --quick --json`, run once for the tests that look at its results:
    (the CLI result, its JSON output or None when it failed)."""
    from typer.testing import CliRunner

    from tagtune.cli.main import app

    folder = tmp_path_factory.mktemp("quick-demo") / "demo"
    result = CliRunner().invoke(app, ["demo", str(folder), "--quick", "--json"])
    out = json.loads(result.output.strip().splitlines()[-1]) if result.exit_code == 0 else None
    return result, out
