"""Shared fixtures: tiny data built once per test run."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")


def _bind_library_loggers() -> None:
    """Create transformers' and diffusers' log handlers now, on the session's stderr.

    Both libraries create their stderr handler at their first log call and keep the stream
    they saw then: if that happens inside a test that captures stderr (capsys, an in-process
    CLI run), every later warning goes to a closed stream and prints a logging error into
    whatever output is captured at the time.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.get_logger("transformers")
    diffusers_logging.get_logger("diffusers")


_bind_library_loggers()


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
