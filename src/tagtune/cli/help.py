"""Help output for every command: flags that take no value show no `<bool>` type.

Typer 0.29's help panels print the value type of every option, a flag's `<bool>` included,
though a flag (`--json`, `--force`, `--help`) takes no value. `hide_flag_types()` fixes this
once for the whole app, where Typer asks an option for the type it displays.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_typer_display_type = TyperOption.display_type_rich


def _display_type(self: TyperOption, ctx: Any) -> str | None:
    """The type a help row shows: none for a flag or a counter, Typer's for the rest."""
    if self.is_flag or self.count:
        return None
    return _typer_display_type(self, ctx)


def hide_flag_types() -> None:
    """Make every help panel show no type after a flag (call once, before the app runs)."""
    TyperOption.display_type_rich = _display_type
