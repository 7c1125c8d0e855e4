"""The contract between library and CLI: defaults live in the library, library errors name
parameters and the CLI shows the user's flags."""

from __future__ import annotations

import inspect

import pytest
import typer

from cli_main import invoke
from tagtune.cli.errors import flag_names, print_error
from tagtune.cli.main import app
from tagtune.core.errors import InputError

# command -> (library function it calls, {CLI parameter: library parameter} where they differ)
LIBRARY = {
    ("init",): ("tagtune.recipe.workspace:init_workspace", {}),
    ("ingest",): ("tagtune.ingest:ingest", {}),
    ("favorites",): ("tagtune.ingest:update_favorites", {}),
    ("status",): ("tagtune.ingest:read_status", {}),
    ("caption",): ("tagtune.captions.build:build_captions", {}),
    ("convert",): ("tagtune.models.convert:convert_model", {}),
    ("bake-vae",): ("tagtune.models.vae_bake:bake_vae", {}),
    ("hash",): ("tagtune.models.hashes:file_hashes", {}),
    ("tiny-model",): (
        "tagtune.models.convert:write_tiny_model",
        {"force": "overwrite"},
    ),
    ("prepare",): ("tagtune.prepare.run:prepare_workspace", {"vae_batch": "vae_batch_size"}),
    ("train",): ("tagtune.train.stages:run_training", {}),
    ("export",): ("tagtune.train.export:export_model", {}),
    ("generate",): ("tagtune.generate.pipeline:generate", {"out": "out_dir"}),
    ("merge",): ("tagtune.merge.checkpoints:MergeSpec", {}),
    ("card",): ("tagtune.card:write_card", {}),
    ("report",): ("tagtune.report.watch:watch_report", {}),
    ("demo",): ("tagtune.demo:run_demo", {}),
    ("clean",): ("tagtune.train.clean:clean_workspace", {}),
    ("extract-lora",): ("tagtune.merge.lora_extract:extract_lora", {}),
    ("merge-lora",): ("tagtune.merge.lora_merge:merge_loras", {}),
    ("tags", "top"): ("tagtune.tags.analytics:top_tags", {}),
    ("tags", "similar"): ("tagtune.tags.analytics:similar_tags", {}),
    ("tags", "suggest"): ("tagtune.tags.analytics:suggest_tags", {}),
    ("tags", "chart"): ("tagtune.tags.chart:write_tags_chart", {}),
}


def _commands() -> dict[tuple[str, ...], object]:
    found = {}

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, (*path, name))
        else:
            found[path] = cmd

    walk(typer.main.get_command(app), ())
    return found


def _library(target: str):
    import importlib

    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def test_every_command_leaves_defaults_to_the_library():
    commands = _commands()
    assert set(commands) == set(LIBRARY), "add new commands to LIBRARY"
    for path, cmd in commands.items():
        target, renamed = LIBRARY[path]
        library = inspect.signature(_library(target)).parameters
        for param in cmd.params:
            default = param.default
            if default is None or default is False or param.required:
                continue  # the user gave nothing: the library decides (False: a flag left off)
            name = renamed.get(param.name, param.name)
            assert name in library, (path, param.name, default, "a default only the CLI knows")
            assert default == library[name].default, (path, param.name, default)


def test_generate_defaults_are_the_librarys():
    cmd = _commands()[("generate",)]
    assert all(p.default in (None, False) for p in cmd.params if not p.required)
    library = inspect.signature(_library(LIBRARY[("generate",)][0])).parameters
    assert library["negative"].default == "worst quality" and library["n"].default == 4


def test_a_library_error_names_the_parameter_and_the_cli_shows_the_flag(tmp_path):
    from tagtune.generate.pipeline import generate

    with pytest.raises(InputError) as e:
        generate(tmp_path / "absent.safetensors", "smile", size="64x64", clip_skip=0)
    assert e.value.message() == "clip_skip = 0: must be at least 1"
    res = invoke("generate", tmp_path / "absent.safetensors", "smile", "--clip-skip", "0")
    assert res.code == 2 and res.error_lines == ["error: --clip-skip = 0: must be at least 1"]
    res = invoke("generate", tmp_path / "absent.safetensors", "smile", "-n", "0")
    assert res.code == 2 and res.error_lines == ["error: -n = 0: must be at least 1"]
    res = invoke("generate", tmp_path / "absent.safetensors", "smile", "--size", "12")
    assert res.error_lines == [
        "error: --size = '12': size must be WIDTHxHEIGHT (allowed: e.g. 832x1216)"
    ]


def test_flag_names_follow_the_command_that_ran():
    commands = _commands()
    generate = flag_names(commands[("generate",)])
    assert generate["clip_skip"] == "--clip-skip" and generate["n"] == "-n"
    assert generate["as_json"] == "--json"
    assert flag_names(commands[("ingest",)])["sources"] == "SOURCE"  # an argument's metavar
    assert flag_names(commands[("tags", "top")])["where"] == "--where"


def test_fields_that_are_not_parameters_stay_as_they_are(capsys):
    flags = {"subset": "--subset", "where": "--where"}
    print_error(InputError("not a subset condition", field="subset/where", value="x"), flags)
    print_error(InputError("bad", field="train.stages[0].subset", value="x"), flags)
    assert capsys.readouterr().err.splitlines() == [
        "error: --subset/--where = 'x': not a subset condition",
        "error: train.stages[0].subset = 'x': bad",
    ]


def test_parameters_in_backquotes_become_flags_in_reason_and_hint(capsys, tmp_path):
    flags = {"force": "--force", "sidecars_dir": "--sidecars-dir"}
    exc = InputError(
        "not replaced, not even with `force`", file="x.png", hint="use `force` or `out`"
    )
    assert exc.message() == "x.png: not replaced, not even with `force`"  # the library's words
    print_error(exc, flags)
    assert capsys.readouterr().err.splitlines() == [
        "error: x.png: not replaced, not even with --force",
        "hint: use --force or `out`",  # `out` is no parameter of this command: left as it is
    ]
    ws = tmp_path / "ws"
    assert invoke("init", ws).code == 0
    res = invoke("init", ws)
    assert res.code == 2 and res.err.splitlines()[1] == "hint: use --force to overwrite it"
