"""The command line: every verb has help with an example, library errors become one line and
exit code 2 inside the app (what `CliRunner` sees is what a user sees)."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner

from tagtune.cli.main import app


def _command_paths(group: typer.Typer) -> list[tuple[str, ...]]:
    """Every command and group of the app, the app itself first: ("tags", "WS", "top"), with a
    placeholder for a group's own arguments (`tags WS top`)."""
    paths = []

    def walk(cmd, path):
        paths.append(path)
        group_args = [
            p.metavar or p.name.upper() for p in cmd.params if p.param_type_name == "argument"
        ]
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, *(group_args if path else []), name))

    walk(typer.main.get_command(group), ())
    return paths


def test_every_command_has_a_description_and_an_example():
    runner = CliRunner()
    paths = _command_paths(app)
    assert {(), ("init",), ("tags",), ("tags", "WS", "top"), ("generate",)} <= set(paths)
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        lines = [line.strip() for line in result.output.splitlines()]
        usage = next(i for i, line in enumerate(lines) if line.startswith("Usage:"))
        description = next(line for line in lines[usage + 1 :] if line)
        assert description.endswith("."), (path, description)
        examples = [line for line in lines if line.startswith("Example: tagtune ")]
        assert len(examples) == 1, (path, result.output)
        assert examples[0].removeprefix("Example: tagtune ").startswith(path[0] if path else ""), (
            path,
            examples[0],
        )


def test_help_shows_no_type_after_a_flag():
    result = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    rows = [line.strip("│ ") for line in result.output.splitlines()]
    force = next(row for row in rows if row.startswith("--force"))
    assert force.split()[1] == "Replace"
    dtype = next(row for row in rows if row.startswith("--dtype"))
    assert "<str>" in dtype


def test_library_error_through_the_test_runner_is_one_line_exit_2(tmp_path):
    runner = CliRunner()
    ws = tmp_path / "ws"
    assert runner.invoke(app, ["init", str(ws)]).exit_code == 0
    again = runner.invoke(app, ["init", str(ws)])
    assert again.exit_code == 2
    assert isinstance(again.exception, SystemExit)
    assert again.stderr.splitlines() == [
        f"error: {ws}: tagtune.toml already exists",
        "hint: use --force to overwrite it",
    ]
    assert again.stdout == ""


def test_library_error_is_one_line_with_hint_and_exit_code_2(tmp_path):
    ws = tmp_path / "ws"
    subprocess.run([sys.executable, "-m", "tagtune.cli.main", "init", str(ws)], check=True)
    again = subprocess.run(
        [sys.executable, "-m", "tagtune.cli.main", "init", str(ws)], capture_output=True, text=True
    )
    assert again.returncode == 2
    assert again.stderr.splitlines()[0] == f"error: {ws}: tagtune.toml already exists"
    assert "hint: use --force" in again.stderr


def test_broken_catalog_and_file_as_workspace_are_one_line_errors(tmp_path):
    ws = tmp_path / "ws"
    subprocess.run([sys.executable, "-m", "tagtune.cli.main", "init", str(ws)], check=True)
    (ws / "catalog.duckdb").write_text("garbage")
    status = subprocess.run(
        [sys.executable, "-m", "tagtune.cli.main", "status", str(ws)],
        capture_output=True,
        text=True,
    )
    assert status.returncode == 2
    assert status.stderr.startswith(f"error: {ws / 'catalog.duckdb'}: not a usable catalog")
    not_a_folder = tmp_path / "favs.txt"
    not_a_folder.write_text("1\n")
    init = subprocess.run(
        [sys.executable, "-m", "tagtune.cli.main", "init", str(not_a_folder)],
        capture_output=True,
        text=True,
    )
    assert init.returncode == 2
    assert init.stderr.splitlines()[0] == f"error: {not_a_folder}: exists and is not a folder"
