"""`import tagtune` gives the pipeline's entry points, documented, without loading torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tagtune


@pytest.mark.parametrize("name", tagtune.__all__)
def test_every_entry_point_resolves_to_a_documented_callable(name):
    entry = getattr(tagtune, name)
    assert callable(entry), name
    assert (entry.__doc__ or "").strip(), f"tagtune.{name} has no docstring"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_step"):
        tagtune.no_such_step  # noqa: B018


@pytest.mark.parametrize("module", ["tagtune", "tagtune.cli.main"])
def test_importing_the_package_or_the_cli_loads_no_heavy_library(module):
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
