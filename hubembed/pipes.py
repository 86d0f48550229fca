"""Bounded queues between the build's threads: a producer thread whose items (and error) come
out in the consuming thread, and a consumer thread whose error is raised in the producing one.
Bounded, so that a fast side waits for a slow one instead of piling blocks up in memory."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Items waiting between two threads: enough to ride out an uneven block, few enough to bound
# memory at a handful of blocks.
QUEUE_ITEMS = 2


class Producer:
    """Runs PRODUCE(put) in a thread; ``items`` yields what it puts, and raises what it raised.
    PRODUCE stops (its ``put`` raises) once STOP is set."""

    _END = object()

    def __init__(self, produce: Callable[[Callable[[Any], None]], None], stop: threading.Event) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_ITEMS)
        self._stop = stop
        self._produce = produce
        self._thread = threading.Thread(target=self._main, name="hubembed-producer", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _main(self) -> None:
        try:
            self._produce(self._put)
            self._put(self._END)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the consuming thread
            with contextlib.suppress(_Stopped):
                self._put(_Failure(exc))

    def items(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item


class Consumer:
    """Hands each item put to CONSUME in a thread of its own; an error there is raised here,
    at the next ``put`` or at ``finish``. ABORT runs after the thread has stopped."""

    def __init__(
        self, consume: Callable[[Any], None], abort: Callable[[], None], stop: threading.Event
    ) -> None:
        self._consume = consume
        self._abort = abort
        self.finished = False
        self._stop = stop
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_ITEMS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="hubembed-consumer", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._error is not None:
                return
            try:
                self._consume(item)
            except BaseException as exc:
                self._error = exc
                self._stop.set()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: Any) -> None:
        while True:
            self._check()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until every item is consumed."""
        self._queue.put(None)
        self._thread.join()
        self._check()
        self.finished = True

    def abort(self) -> None:
        self._error = self._error or _Stopped()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=60)
        self._abort()


class _Stopped(Exception):
    """The other side of a queue has gone."""


@dataclass
class _Failure:
    error: BaseException
