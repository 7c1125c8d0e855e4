"""The command line: every verb has help, library errors become one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner

from tagtune.cli.main import app


def _command_paths(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    click_group = typer.main.get_command(group)
    paths = []

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, (*path, name))
        else:
            paths.append(path)

    walk(click_group, prefix)
    return paths


def test_every_command_has_help():
    runner = CliRunner()
    paths = _command_paths(app)
    assert ("init",) in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


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
