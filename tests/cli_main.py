"""Run `tagtune VERB ...` in-process and see what a user sees: exit code, stdout, stderr.

`invoke` goes through Typer's test runner (`CliRunner().invoke(app, ...)`); `run_cli` through
the real entry point (`tagtune.cli.main.main`, which also turns SIGTERM into Ctrl-C). Both see
a library error as one `error:` line (+ `hint:`) and exit code 2, and the stale-temporaries
report on stderr.
"""

from __future__ import annotations

import contextlib
import io
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


def invoke(*args, input: str | None = None) -> CliResult:
    """Run `tagtune *args` through the test runner; returns its exit code, stdout and stderr."""
    from typer.testing import CliRunner

    from tagtune.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


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


def run_with_deadline(args, timeout: int) -> CliResult:
    """`tagtune ARGS` in this process through the real entry point, stdout and stderr captured
    without pytest's capsys; a command that runs past `timeout` seconds fails the test."""
    from tagtune.cli.main import main

    def too_long(signum, frame):
        raise TimeoutError(f"tagtune {' '.join(map(str, args))} ran over {timeout} s")

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_term = sys.argv, signal.getsignal(signal.SIGTERM)
    old_alarm = signal.signal(signal.SIGALRM, too_long)
    sys.argv = ["tagtune", *map(str, args)]
    signal.alarm(timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)
        sys.argv = old_argv
    return CliResult(code, out.getvalue(), err.getvalue())
