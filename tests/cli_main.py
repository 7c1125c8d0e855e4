"""Run `tagtune VERB ...` through the real entry point (`tagtune.cli.main.main`) in-process.

Unlike `CliRunner().invoke(app, ...)`, this goes through what a user's shell reaches: library
errors become one `error:` line and exit code 2, and the stale-temporaries report is printed.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass


@dataclass
class CliResult:
    """Exit code and captured output of one command."""

    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        """The `error:` lines on stderr."""
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def run_cli(capsys, *args) -> CliResult:
    """Run `tagtune *args` in this process; returns its exit code, stdout and stderr."""
    from tagtune.cli.main import main

    capsys.readouterr()
    argv, handler = sys.argv, signal.getsignal(signal.SIGTERM)
    sys.argv = ["tagtune", *[str(a) for a in args]]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
        signal.signal(signal.SIGTERM, handler)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)
