"""`tagtune VERB`: registers every verb; `cli/errors.py` turns library errors into one line."""

from __future__ import annotations

import signal

import typer

from tagtune.cli import (
    caption,
    card,
    clean,
    demo,
    export,
    generate,
    ingest,
    init,
    lora,
    merge,
    models,
    prepare,
    report,
    tags,
    train,
)
from tagtune.cli.errors import TagtuneGroup
from tagtune.cli.help import hide_flag_types

hide_flag_types()

app = typer.Typer(
    name="tagtune",
    cls=TagtuneGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Turn a Danbooru-style image collection into a fine-tuned SDXL checkpoint.

    Example: tagtune demo --quick (every verb once on a synthetic collection)
    """


for module in (
    init,
    ingest,
    caption,
    tags,
    models,
    prepare,
    train,
    clean,
    export,
    generate,
    merge,
    lora,
    card,
    report,
    demo,
):
    module.register(app)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: run the app (which turns a TagtuneError into `error: ...` and exit code 2).

    SIGTERM (timeout, a job scheduler, `docker stop`) is handled like Ctrl-C, so long verbs
    keep what they finished (prepare's encoded shard, for one) before they exit.
    """
    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":
    main()
