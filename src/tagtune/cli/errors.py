"""Where the CLI meets library errors: one `error:` line, the flag the user typed, exit code 2.

The root group of the app (`TagtuneGroup`) runs every command. A `TagtuneError` raised below it
becomes `error: ...` (+ `hint: ...`) on stderr and exit code 2 inside the app itself, so
`CliRunner().invoke(app, ...)` sees what a user's shell sees. Library errors name a parameter
(`clip_skip`) or a recipe key (`train.stages[0].subset`); when the field is a parameter of the
command that ran, the line shows its flag (`--clip-skip`) or its argument's metavar (`WS`); a
parameter named in backquotes in the reason or hint ("use `force` to replace it") is shown the
same way ("use --force to replace it").
Ctrl-C (and SIGTERM, which `main()` turns into Ctrl-C) exits 130 with `interrupted`; what the
command's writers freed of killed writes' temporaries is reported on stderr in every case.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup

from tagtune.cli.common import err_console, error_line
from tagtune.core.errors import TagtuneError
from tagtune.core.stale_temps import freed_total, reset_freed_total

_RESOLVED = "tagtune.resolved"


class TagtuneGroup(TyperGroup):
    """The app's root group: turns library errors and Ctrl-C into a message and an exit code."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        """Resolve as Typer does, and remember the command and its arguments for `flag_names`."""
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta[_RESOLVED] = (cmd, list(rest))
        return name, cmd, rest

    def invoke(self, ctx: Any) -> Any:
        """Run the command; a `TagtuneError` exits 2 and Ctrl-C exits 130, each with one line."""
        reset_freed_total()
        try:
            return super().invoke(ctx)
        except TagtuneError as exc:
            print_error(exc, flag_names(_leaf_command(ctx)))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        finally:
            _report_freed()


def flag_names(command: Any) -> dict[str, str]:
    """Parameter name -> what the user types for it: `clip_skip` -> `--clip-skip`, `n` -> `-n`,
    an argument -> its metavar where it has one (`WS`), else its name as the help shows it."""
    names: dict[str, str] = {}
    for param in getattr(command, "params", []):
        if not param.name:
            continue
        if isinstance(param, TyperArgument):
            names[param.name] = param.metavar or param.name
        elif param.opts:
            longs = [o for o in param.opts if o.startswith("--")]
            names[param.name] = (longs or param.opts)[0]
    return names


def print_error(exc: TagtuneError, flags: dict[str, str] | None = None) -> None:
    """Print `error: ...` (+ `hint: ...`) on stderr, parameters shown as the user's flags: the
    field (`subset/where`, two parameters together, becomes `--subset/--where`) and any
    `name` in backquotes in the reason or hint."""
    shown = exc
    if flags:
        shown = copy.copy(exc)
        if exc.field:
            shown.field = "/".join(flags.get(part, part) for part in exc.field.split("/"))
        shown.reason = _flags_in_text(exc.reason, flags)
    hint = _flags_in_text(exc.hint, flags) if exc.hint and flags else exc.hint
    for line in error_line(shown.message(), hint):
        err_console.print(line, soft_wrap=True)


def _flags_in_text(text: str, flags: dict[str, str]) -> str:
    """`text` with each backquoted parameter name (`force`) replaced by its flag (--force)."""
    return re.sub(r"`(\w+)`", lambda m: flags.get(m.group(1), m.group(0)), text)


def _leaf_command(ctx: Any) -> Any:
    """The command that ran (`tags top`, not `tags`), found again from the arguments."""
    cmd, args = ctx.meta.get(_RESOLVED, (None, []))
    while isinstance(cmd, TyperGroup):
        try:
            sub_ctx = cmd.make_context(cmd.name, list(args), parent=ctx, resilient_parsing=True)
            rest = [*sub_ctx._protected_args, *sub_ctx.args]
            if not rest:
                return cmd
            _, cmd, args = cmd.resolve_command(sub_ctx, rest)
        except Exception:
            return cmd
    return cmd


def _report_freed() -> None:
    """Say what the command's writers freed of what killed writes left (on stderr)."""
    freed = freed_total()
    if freed.files:
        err_console.print(freed.message(), markup=False, soft_wrap=True)
