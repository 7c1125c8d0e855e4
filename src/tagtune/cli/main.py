"""`tagtune VERB`: registers every verb and turns library errors into one-line messages."""

from __future__ import annotations

import signal
import sys

import typer

from tagtune.cli import (
    caption,
    card,
    demo,
    export,
    generate,
    ingest,
    merge,
    models,
    prepare,
    report,
    tags,
    train,
    workspace,
)
from tagtune.cli.common import err_console, error_line
from tagtune.core.errors import TagtuneError
from tagtune.core.stale_temps import freed_total, reset_freed_total

app = typer.Typer(
    name="tagtune",
    help="Turn a Danbooru-style image collection into a fine-tuned SDXL checkpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Turn a Danbooru-style image collection into a fine-tuned SDXL checkpoint."""


for module in (
    workspace,
    ingest,
    caption,
    tags,
    models,
    prepare,
    train,
    export,
    generate,
    merge,
    card,
    report,
    demo,
):
    module.register(app)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: run the app; a TagtuneError becomes `error: ...` (+ hint) and exit code 2.

    SIGTERM (timeout, a job scheduler, `docker stop`) is handled like Ctrl-C, so long verbs
    keep what they finished (prepare's encoded shard, for one) before they exit.
    """
    signal.signal(signal.SIGTERM, _terminate)
    reset_freed_total()
    try:
        app()
    except TagtuneError as exc:
        for line in error_line(exc.message(), exc.hint):
            err_console.print(line, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    finally:
        _report_freed()


def _report_freed() -> None:
    """Say what the command's writers freed of what killed writes left (on stderr)."""
    freed = freed_total()
    if freed.files:
        err_console.print(freed.message(), markup=False, soft_wrap=True)


if __name__ == "__main__":
    main()
