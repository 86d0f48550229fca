"""What a refresh may reuse: vectors keyed by a hash of their text.

Two places hold such vectors: the previous build in DST (each row stores its text's hash) and
the checkpoints of an interrupted build (batches saved as they complete). Both are read into
one ``VectorCache``, so "embed only what changed" and "resume where it stopped" are the same
thing: look the text up, embed only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import numpy as np

from . import config

log = logging.getLogger("hubembed")

HASH_COLUMN = "text_sha256"
# Settings that change the vectors: a change in any of them means re-embedding everything.
FINGERPRINT_KEYS = ("model", "model_revision", "prompt_name", "prompt", "truncate_dim", "normalize")


def text_hashes(texts: list[str]) -> list[str]:
    return [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]


def fingerprint(meta: dict[str, Any]) -> str:
    """A stable id of the embedding settings in META (a card's metadata)."""
    data = {k: meta.get(k) for k in FINGERPRINT_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class VectorCache:
    """text hash -> vector, filled from a previous build and from checkpoints."""

    def __init__(self) -> None:
        self._index: dict[str, tuple[int, int]] = {}
        self._blocks: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        if not len(hashes):
            return
        self._blocks.append(vectors)
        block = len(self._blocks) - 1
        for row, h in enumerate(hashes):
            self._index[h] = (block, row)

    def get(self, key: str) -> np.ndarray:
        block, row = self._index[key]
        return self._blocks[block][row]

    @property
    def dimension(self) -> int | None:
        return self._blocks[0].shape[1] if self._blocks else None


class Checkpoint:
    """Batches of an unfinished build, saved under the hubembed cache as they complete.

    Files are written whole, then renamed, so a build killed at any point (SIGKILL too)
    leaves only complete batches. Keyed by source and settings, not by source revision: a
    source edited between a killed run and its rerun still reuses every unchanged text.
    """

    FLUSH_ROWS = 1024
    FLUSH_SECONDS = 10.0

    def __init__(self, source_id: str, settings_key: str) -> None:
        key = hashlib.sha256(f"{source_id}\0{settings_key}".encode()).hexdigest()[:24]
        self.path = config.cache_dir() / "checkpoints" / key
        self._hashes: list[str] = []
        self._vectors: list[np.ndarray] = []
        self._last_flush = time.monotonic()

    def load_into(self, cache: VectorCache) -> int:
        """Add every saved batch to CACHE; return how many vectors were found."""
        found = 0
        for f in sorted(self.path.glob("batch-*.npz")):
            try:
                with np.load(f) as data:
                    hashes = [h.decode() for h in data["hashes"]]
                    cache.add(hashes, data["vectors"])
                    found += len(hashes)
            except (OSError, ValueError, KeyError):  # a damaged file is only lost work
                log.debug("ignoring unreadable checkpoint %s", f)
        return found

    def save(self, hashes: list[str], vectors: np.ndarray) -> None:
        self._hashes.extend(hashes)
        self._vectors.append(vectors)
        due = time.monotonic() - self._last_flush >= self.FLUSH_SECONDS
        if len(self._hashes) >= self.FLUSH_ROWS or due:
            self.flush()

    def flush(self) -> None:
        if not self._hashes:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"batch-{time.time_ns():020d}-{os.getpid()}"
        tmp = self.path / f".{name}.tmp.npz"
        np.savez(tmp, hashes=np.array(self._hashes, dtype="S64"), vectors=np.concatenate(self._vectors))
        os.replace(tmp, self.path / f"{name}.npz")
        self._hashes, self._vectors = [], []
        self._last_flush = time.monotonic()

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
