"""Batching, concurrency, retries and progress for any embedder, in one place."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

import numpy as np

from .embedder import Embedder
from .errors import RemoteError, TimeBudgetExceeded
from .retry import BatchTooLargeError, Deadline, RetryPolicy, call_with_retry

if TYPE_CHECKING:
    from tqdm import tqdm as Tqdm

log = logging.getLogger("hubembed")

OnBatch = Callable[[int, np.ndarray], None]


class _Run:
    """State shared by the batches of one embed_all call."""

    def __init__(
        self,
        embedder: Embedder,
        texts: list[str],
        batch_size: int,
        policy: RetryPolicy,
        deadline: Deadline,
        notify: Callable[[float, str], None] | None = None,
    ):
        self.embedder = embedder
        self.notify = notify
        self.texts = texts
        self.limit = batch_size  # shrinks when a server refuses batches as too large
        self.policy = policy
        self.deadline = deadline
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.retries = 0
        self.bar: Tqdm | None = None

    def on_wait(self, seconds: float, reason: str) -> None:
        with self.lock:
            self.retries += 1
        note = f"waiting {seconds:.0f} s: {reason}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{note} (retries: {self.retries})", refresh=True)
        if self.notify is not None:
            self.notify(seconds, reason)
        else:
            log.info(note)

    def span(self, start: int, end: int) -> list[tuple[int, np.ndarray]]:
        """Embed texts[start:end], splitting whenever the server says a batch is too large."""
        pieces = []
        pos = start
        while pos < end:
            size = min(self.limit, end - pos)
            batch = self.texts[pos : pos + size]
            try:
                vectors = call_with_retry(
                    lambda timeout, batch=batch: self.embedder.embed_batch(batch, timeout),  # type: ignore[misc]
                    self.policy,
                    self.deadline,
                    on_wait=self.on_wait,
                    cancelled=self.cancelled,
                )
            except BatchTooLargeError as exc:
                if size == 1:
                    raise RemoteError(f"the server refuses even one text at a time: {exc}") from exc
                with self.lock:
                    if size <= self.limit:
                        self.limit = max(1, size // 2)
                        log.info(
                            "the server refused %d texts at once: sending batches of %d", size, self.limit
                        )
                continue
            pieces.append((pos, vectors))
            pos += size
        return pieces


def embed_all(
    embedder: Embedder,
    texts: list[str],
    *,
    batch_size: int,
    progress: bool | None = None,
    policy: RetryPolicy | None = None,
    time_budget: float | None = None,
    deadline: Deadline | None = None,
    on_batch: OnBatch | None = None,
    on_wait: Callable[[float, str], None] | None = None,
) -> np.ndarray:
    """Embed TEXTS into one (n, d) float32 array, rows in input order, whatever the retries.

    Up to ``embedder.max_concurrency`` batches are in flight at once. ON_BATCH(start, vectors)
    sees every finished batch (for checkpoints), in the calling thread. Raises
    TimeBudgetExceeded when TIME_BUDGET seconds (or DEADLINE, shared by several calls) run
    out; finished batches were passed on first. ON_WAIT(seconds, reason) hears of each wait
    before a retry (logged when not given).
    """
    from tqdm.auto import tqdm

    deadline = deadline or Deadline(time_budget)
    run = _Run(embedder, texts, batch_size, policy or RetryPolicy(), deadline, on_wait)
    out: np.ndarray | None = None
    done = 0

    def accept(pieces: list[tuple[int, np.ndarray]]) -> None:
        nonlocal out, done
        for start, vectors in pieces:
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            if vectors.shape != (len(vectors), out.shape[1]) or len(vectors) > len(texts) - start:
                raise RemoteError(
                    f"the embedder returned shape {vectors.shape} where {out.shape[1]} columns were expected"
                )
            out[start : start + len(vectors)] = vectors
            if on_batch is not None:
                on_batch(start, vectors)
            done += len(vectors)
            assert run.bar is not None
            run.bar.update(len(vectors))

    spans = [(s, min(s + batch_size, len(texts))) for s in range(0, len(texts), batch_size)]
    workers = max(1, embedder.max_concurrency)
    with tqdm(
        total=len(texts), unit="text", desc="embedding", disable=None if progress is None else not progress
    ) as bar:
        run.bar = bar
        try:
            if workers == 1:
                for start, end in spans:
                    accept(run.span(start, end))
            else:
                _concurrently(run, spans, workers, accept)
        except TimeBudgetExceeded as exc:
            raise TimeBudgetExceeded(
                f"{exc}; {done} of {len(texts)} texts were embedded", reason=exc.reason
            ) from exc
    if out is None:
        return np.empty((0, embedder.dimension or 0), dtype=np.float32)
    return out


def _concurrently(
    run: _Run,
    spans: list[tuple[int, int]],
    workers: int,
    accept: Callable[[list[tuple[int, np.ndarray]]], None],
) -> None:
    # At most WORKERS spans are submitted at a time, so a failure stops the job within one round.
    pending: set[Future] = set()
    queue = iter(spans)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hubembed") as pool:
        try:
            for span in queue:
                pending.add(pool.submit(run.span, *span))
                if len(pending) < workers:
                    continue
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    accept(future.result())
            for future in pending:
                accept(future.result())
        except BaseException:
            run.cancelled.set()  # wakes requests sleeping before a retry
            for future in pending:
                future.cancel()
            raise
