"""Engines: where a block's missing texts are embedded. Everything else is the build's loop.

The loop (hubembed/stream.py) reads, hashes, reuses, checkpoints and writes; an engine only
turns the texts a block has no vector for into vectors, under the run's retry policy and time
budget. ``LocalEngine`` embeds in this process (one device, or several through
sentence-transformers' pool); ``RayEngine`` (hubembed/ray_engine.py) on a pool of Ray actors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batching import OnBatch, embed_all
from .embedder import Embedder
from .retry import Deadline, RetryPolicy

# Makes the embedder, where it runs (here, or on each Ray actor), and says which query settings
# the card records: {"query_prompt_name": ..., "query_prompt": ...}.
MakeEmbedder = Callable[[], tuple[Embedder, dict[str, Any]]]


@dataclass
class EmbedRun:
    """What every embedding call of one build shares, whichever engine makes it."""

    batch_size: int  # texts per call, where the embedder names no size of its own
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    deadline: Deadline = field(default_factory=lambda: Deadline(None))
    #: ON_BATCH(start, vectors) for each finished piece of an ``embed`` call, in the calling
    #: thread, before ``embed`` returns: the loop checkpoints there
    on_batch: OnBatch | None = None
    #: ON_WAIT(seconds, reason) before each retry
    on_wait: Callable[[float, str], None] | None = None


class Engine(ABC):
    """Turns texts into vectors for the build's loop."""

    #: the query settings the card records, known once the embedder is made (None before)
    query_meta: dict[str, Any] | None = None

    @abstractmethod
    def embed(self, texts: list[str], run: EmbedRun) -> np.ndarray:
        """Vectors for TEXTS, (len(texts), d) float32, rows in input order.

        Raises TimeBudgetExceeded when RUN's deadline passes; pieces already finished were
        handed to ``run.on_batch`` first.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release models, processes and connections."""


class LocalEngine(Engine):
    """Embeds in this process. The model is made on the first call: a build that reuses every
    vector never loads it."""

    def __init__(self, make: MakeEmbedder) -> None:
        self._make = make
        self._embedder: Embedder | None = None

    def embed(self, texts: list[str], run: EmbedRun) -> np.ndarray:
        if self._embedder is None:
            self._embedder, self.query_meta = self._make()
        embedder = self._embedder
        return embed_all(
            embedder,
            texts,
            batch_size=embedder.texts_per_call or run.batch_size,
            progress=False,
            policy=run.policy,
            deadline=run.deadline,
            on_batch=run.on_batch,
            on_wait=run.on_wait,
        )

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()  # worker processes of a multi-device pool
            self._embedder = None
