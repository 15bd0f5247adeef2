"""Read the next blocks of an object while the current one is being worked on."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

_END = object()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_ahead(blocks: Iterable[bytes], depth: int = 2) -> Iterator[bytes]:
    """Yield `blocks` in order while a thread fetches up to `depth` of the next ones.

    Reading (a download from the bucket, or a file read) releases the GIL, and so does
    most of the planner's work on a block (numpy), so a block's read overlaps the scan of
    the one before instead of adding to it. An error raised while reading is raised here,
    after the blocks read before it. Stopping early (closing this generator, or an error
    in the consumer) stops the thread and closes `blocks` in it.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def offer(item: object) -> bool:
        while not stopped.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def fetch() -> None:
        iterator = None
        try:
            iterator = iter(blocks)
            for block in iterator:
                if not offer(block):
                    return
            offer(_END)
        except BaseException as error:  # noqa: BLE001 - handed over to the consumer
            offer(_Failed(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=fetch, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stopped.set()
        thread.join()
