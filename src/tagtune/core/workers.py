"""A worker thread fed through a queue: hashing and writing overlap reading (hashlib, zlib,
blake3 and file writes release the GIL), with errors handed back to the caller's thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class Background:
    """One worker thread applying `fn` to queued items in order (hashing, writing).

    `done(item)` runs after each item (to release its buffer), also after an error, so the
    queue always drains and nobody waits forever on a buffer.
    """

    def __init__(
        self,
        fn: Callable[[object], object],
        done: Callable[[object], None] | None = None,
        depth: int = 2,
    ) -> None:
        self.fn = fn
        self.done = done
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            try:
                if self.error is None:
                    self.fn(item)
            except BaseException as exc:  # re-raised in the caller's thread
                self.error = exc
            finally:
                if self.done is not None:
                    self.done(item)

    def put(self, item: object) -> None:
        """Queue one item (blocks while the queue is full); raises the worker's error."""
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def close(self) -> None:
        """Finish the queued work, stop the thread, re-raise its error if any."""
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error
