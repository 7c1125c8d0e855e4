"""A recipe subset that cannot run names the recipe file, the stage and its key, and lists
the columns a WHERE clause may use, on the paths that read it before any work (train
--dry-run, prepare --plan); the README documents exactly those columns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tagtune.core.catalog import check_subset, open_catalog
from tagtune.core.subsets import SUBSET_COLUMNS
from tagtune.recipe.model import StageConfig
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(
    "clause, why",
    [("scroe > 5", "not a subset condition"), ("tags_general = 5", "invalid subset WHERE")],
)
@pytest.mark.parametrize("command", [["train", "--dry-run"], ["prepare", "--plan"]], ids=" ".join)
def test_a_bad_stage_subset_names_file_stage_key_and_columns(
    tmp_path, capsys, command, clause, why
):
    from cli_main import run_cli

    recipe = tiny_train_recipe()
    recipe.train.stages.append(StageConfig(name="favs", subset=clause, epochs=1))
    ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=2)
    res = run_cli(capsys, command[0], ws.root, *command[1:])
    assert res.code == 2, res.out + res.err
    (line,) = [ln for ln in res.error_lines if f"train.stages[1].subset = {clause!r}" in ln]
    assert line.startswith(f"error: {ws.recipe_path}: ")  # the file, then stage, key, reason
    assert "stage 'favs'" in line and why in line
    assert "(allowed: columns " + ", ".join(SUBSET_COLUMNS) + ";" in line


def test_the_readme_lists_exactly_the_subset_columns(tmp_path):
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- subset-columns -->")
    end = text.index("<!-- /subset-columns -->")
    rows = [ln for ln in text[start:end].splitlines() if ln.startswith("| `")]
    documented = [re.match(r"\| `([a-z_0-9]+)`", ln).group(1) for ln in rows]
    assert documented == list(SUBSET_COLUMNS)
    examples = [ln.split("|")[4].strip().strip("`") for ln in rows]
    with open_catalog(tmp_path / "catalog.duckdb") as con:  # every example clause runs
        for clause in examples:
            check_subset(con, clause)
