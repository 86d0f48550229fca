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
# "precision" is absent (None) for fp32 builds, so cards written before it existed still match.
FINGERPRINT_KEYS = (
    "model",
    "model_revision",
    "prompt_name",
    "prompt",
    "truncate_dim",
    "normalize",
    "precision",
)


def text_hashes(texts: list[str]) -> list[str]:
    return [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]


def digest_array(hashes: list[str]) -> np.ndarray:
    """Hex digests as a sortable S32 array (the checkpoints' and VectorTable's form)."""
    return np.array([bytes.fromhex(h) for h in hashes], dtype="S32")


def digest_hex(digest: bytes) -> str:
    # numpy drops trailing NUL bytes from an S32 item; put them back.
    return digest.ljust(32, b"\0").hex()


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

    def take_table(self) -> VectorTable | None:
        """Move the vectors into two sorted arrays, cheap to ship to other processes (Ray
        actors); the cache is left empty, so the driver does not hold them twice."""
        if not self._index:
            return None
        digests = digest_array(list(self._index))
        order = np.argsort(digests, kind="stable")
        locations = np.array(list(self._index.values()), dtype=np.int64)[order]
        vectors = np.empty((len(locations), self._blocks[0].shape[1]), dtype=np.float32)
        for b, block in enumerate(self._blocks):
            mine = np.flatnonzero(locations[:, 0] == b)
            vectors[mine] = block[locations[mine, 1]]
        self._index, self._blocks = {}, []
        return VectorTable(digests[order], vectors)


class VectorTable:
    """text digest -> vector as sorted arrays: no per-entry Python objects, read in place from
    Ray's object store by every actor on a node."""

    def __init__(self, digests: np.ndarray, vectors: np.ndarray) -> None:
        self.digests = digests
        self.vectors = vectors

    def find(self, digests: np.ndarray) -> np.ndarray:
        """The row of each of DIGESTS (S32), or -1 where there is none."""
        if not len(self.digests):
            return np.full(len(digests), -1, dtype=np.int64)
        rows = np.searchsorted(self.digests, digests).clip(max=len(self.digests) - 1)
        return np.where(self.digests[rows] == digests, rows, -1)


class Checkpoint:
    """Vectors of an unfinished build, appended to a file under the hubembed cache as each
    batch completes.

    Each record is a text's sha256 digest followed by its float32 vector, so a build killed
    at any point (SIGKILL too) leaves whole records plus at most one partial one, which the
    reader drops: every finished batch survives. Keyed by source and settings, not by source
    revision: a source edited between a killed run and its rerun still reuses every
    unchanged text.
    """

    def __init__(self, source_id: str, settings_key: str) -> None:
        key = hashlib.sha256(f"{source_id}\0{settings_key}".encode()).hexdigest()[:24]
        self.path = config.cache_dir() / "checkpoints" / key
        self._fd: int | None = None

    @staticmethod
    def _dtype(dimension: int) -> np.dtype:
        return np.dtype([("digest", "S32"), ("vector", "<f4", (dimension,))])

    def load_into(self, cache: VectorCache) -> int:
        """Add every saved vector to CACHE; return how many were found."""
        found = 0
        for f in sorted(self.path.glob("run-*-d*.bin")):
            try:
                dtype = self._dtype(int(f.stem.rsplit("-d", 1)[1]))
                raw = f.read_bytes()
                records = np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize)
            except (OSError, ValueError):  # a damaged file is only lost work
                log.debug("ignoring unreadable checkpoint %s", f)
                continue
            cache.add([digest_hex(d) for d in records["digest"]], np.array(records["vector"]))
            found += len(records)
        return found

    def save(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Append one finished batch, in a single write."""
        records = np.empty(len(hashes), dtype=self._dtype(vectors.shape[1]))
        records["digest"] = digest_array(hashes)
        records["vector"] = vectors
        if self._fd is None:
            self.path.mkdir(parents=True, exist_ok=True)
            name = f"run-{time.time_ns():020d}-{os.getpid()}-d{vectors.shape[1]}.bin"
            self._fd = os.open(self.path / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        data = memoryview(records.tobytes())
        while data:
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

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
