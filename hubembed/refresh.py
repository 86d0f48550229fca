"""What a refresh may reuse: vectors keyed by a hash of their text.

Two places hold such vectors: the previous build in DST (each row stores its text's hash) and
the checkpoints of an interrupted build (batches saved as they complete). Both are looked up
through one ``ReuseIndex``, so "embed only what changed" and "resume where it stopped" are the
same thing: look the text up, embed only what is missing. The index holds only the digests; the
vectors stay where they are, memory-mapped, and are read a block's rows at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import config

log = logging.getLogger("hubembed")

HASH_COLUMN = "text_sha256"
# The index keys on the first 16 bytes of each sha256: half the memory of whole digests, and
# still 128 bits, so two different texts are not taken for one.
_KEY = "S16"


def hash_keys(chunks: Iterable[Any]) -> np.ndarray:
    """The keys of HASH_COLUMN's hex digests, given as Arrow arrays a chunk at a time, as
    ReuseIndex keys them."""
    keys = [np.frombuffer(bytes.fromhex("".join(c.to_pylist())), dtype="S32").astype(_KEY) for c in chunks]
    return np.concatenate(keys) if keys else np.empty(0, _KEY)


class ReuseIndex:
    """text digest -> vector, over arrays of vectors that stay where they are."""

    def __init__(self) -> None:
        self._keys: list[np.ndarray] = []
        self._vectors: list[Any] = []  # (n, d) arrays, np.memmap or strided views of one
        self._sorted: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys)

    @property
    def dimension(self) -> int | None:
        return int(self._vectors[0].shape[1]) if self._vectors else None

    def add(self, digests: np.ndarray, vectors: Any) -> None:
        """DIGESTS (S32, one per row of VECTORS) can now be found."""
        if not len(digests):
            return
        if self.dimension not in (None, vectors.shape[1]):
            log.debug("ignoring %d saved vectors of another dimension", len(digests))
            return
        self._keys.append(digests.astype(_KEY))
        self._vectors.append(vectors)
        self._sorted = None

    def _index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._sorted is None:
            keys = np.concatenate(self._keys) if self._keys else np.empty(0, _KEY)
            order = np.argsort(keys, kind="stable")
            starts = np.cumsum([0] + [len(k) for k in self._keys])
            self._sorted = (keys[order], order, starts)
        return self._sorted

    def find(self, digests: np.ndarray) -> np.ndarray:
        """For each of DIGESTS (S32): an id to ``take``, or -1 where no vector is known."""
        keys, order, _ = self._index()
        if not len(keys):
            return np.full(len(digests), -1, dtype=np.int64)
        wanted = digests.astype(_KEY)
        at = np.searchsorted(keys, wanted).clip(max=len(keys) - 1)
        return np.where(keys[at] == wanted, order[at], -1).astype(np.int64)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of IDS (from ``find``, none -1), read from where they are kept."""
        _, _, starts = self._index()
        out = np.empty((len(ids), self.dimension or 0), dtype=np.float32)
        source = np.searchsorted(starts, ids, side="right") - 1
        for s in np.unique(source):
            mine = np.flatnonzero(source == s)
            rows = ids[mine] - starts[s]
            # Sorted reads from a memory map touch each page once, in file order.
            order = np.argsort(rows, kind="stable")
            out[mine[order]] = self._vectors[s][rows[order]]
        return out


class Checkpoint:
    """Vectors of an unfinished build, appended to files under the hubembed cache as each
    batch completes.

    A run writes two files: the vectors (float32 rows) and, after them, the sha256 digests of
    their texts. A digest is only ever written after its vector, so a build killed at any point
    (SIGKILL too) leaves digests that all have whole vectors, plus perhaps vectors without a
    digest, which the reader ignores: every finished batch survives. The vectors are written
    straight from the embedder's array, without a copy, and read back memory-mapped. Keyed by
    source and settings, not by source revision: a source edited between a killed run and its
    rerun still reuses every unchanged text.
    """

    def __init__(self, source_id: str, settings_key: str) -> None:
        key = hashlib.sha256(f"{source_id}\0{settings_key}".encode()).hexdigest()[:24]
        self.path = config.cache_dir() / "checkpoints" / key
        self._fds: tuple[int, int] | None = None

    def load_into(self, index: ReuseIndex) -> int:
        """Make every saved vector findable in INDEX, memory-mapped; return how many there are."""
        found = 0
        for keys in sorted(self.path.glob("run-*-d*.sha")):
            try:
                dimension = int(keys.stem.rsplit("-d", 1)[1])
                data = keys.with_suffix(".f32")
                count = min(keys.stat().st_size // 32, data.stat().st_size // (4 * dimension))
                if not count:
                    continue
                digests = np.fromfile(keys, dtype="S32", count=count)
                vectors = np.memmap(data, dtype="<f4", mode="r", shape=(count, dimension))
            except (OSError, ValueError):  # a damaged file is only lost work
                log.debug("ignoring unreadable checkpoint %s", keys)
                continue
            index.add(digests, vectors)
            found += count
        return found

    def save(self, digests: np.ndarray, vectors: np.ndarray) -> None:
        """Append one finished batch (DIGESTS: S32, one per vector): vectors first, then digests."""
        if self._fds is None:
            self.path.mkdir(parents=True, exist_ok=True)
            stem = self.path / f"run-{time.time_ns():020d}-{os.getpid()}-d{vectors.shape[1]}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
            self._fds = (
                os.open(stem.with_suffix(".f32"), flags, 0o600),
                os.open(stem.with_suffix(".sha"), flags, 0o600),
            )
        for fd, array in zip(self._fds, (vectors.astype("<f4", copy=False), digests), strict=True):
            data = np.ascontiguousarray(array).data.cast("B")
            while data:
                data = data[os.write(fd, data) :]

    def close(self) -> None:
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None

    def clear(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def prune_stale(self, max_age_days: float = 7.0) -> int:
        """Remove other builds' checkpoints untouched for MAX_AGE_DAYS (abandoned settings or
        sources); return how many. An interrupted build resumed within that time keeps its own."""
        cutoff = time.time() - max_age_days * 86400
        removed = 0
        for other in self.path.parent.glob("*"):
            if other != self.path and other.is_dir() and other.stat().st_mtime < cutoff:
                shutil.rmtree(other, ignore_errors=True)
                removed += 1
        return removed
