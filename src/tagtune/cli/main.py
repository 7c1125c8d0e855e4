"""`tagtune VERB`: registers every verb and turns library errors into one-line messages."""

from __future__ import annotations

import signal
import sys

import typer

from tagtune.cli import (
    caption_cmd,
    card_cmd,
    demo_cmd,
    generate_cmd,
    ingest_cmd,
    lora_cmds,
    merge_cmd,
    model_cmds,
    prepare_cmd,
    report_cmd,
    tags_cmd,
    train_cmd,
    workspace_cmds,
)
from tagtune.cli.common import err_console, error_line
from tagtune.errors import TagtuneError
from tagtune.stale_temps import freed_total, reset_freed_total

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
    workspace_cmds,
    ingest_cmd,
    caption_cmd,
    tags_cmd,
    model_cmds,
    prepare_cmd,
    train_cmd,
    generate_cmd,
    merge_cmd,
    lora_cmds,
    card_cmd,
    report_cmd,
    demo_cmd,
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
