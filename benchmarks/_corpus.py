"""Seeded synthetic corpora for the search and load benchmarks: nothing is downloaded.

Vectors are random unit vectors (what a normalising model gives, as far as search cares).
``build_dataset`` publishes them with ``hubembed.build`` itself, through an embedder that
replays them, so the folder has exactly hubembed's layout and card.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

_BLOCK = 65_536


def unit_vectors(rows: int, dim: int = 384, *, seed: int = 0) -> np.ndarray:
    """ROWS seeded random unit vectors, float32, made a block at a time (no float64 copy)."""
    rng = np.random.default_rng(seed)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, _BLOCK):
        block = out[start : start + _BLOCK]
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def row_lengths(rows: int, *, seed: int = 1) -> np.ndarray:
    """Seeded row lengths in [0.5, 2): scaling unit vectors by them gives an unnormalised corpus."""
    return np.random.default_rng(seed).uniform(0.5, 2.0, size=rows).astype(np.float32)


def text(i: int) -> str:
    return f"synthetic row {i}"


def isolate_caches(work: Path) -> None:
    """Point the Hugging Face and hubembed caches into WORK, before datasets is imported."""
    os.environ["HF_HOME"] = str(work / "hf_home")
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf_home" / "datasets")
    os.environ["HUBEMBED_CACHE"] = str(work / "hubembed_cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_dataset(folder: Path, vectors: np.ndarray, work: Path) -> Path:
    """hubembed.build of one text per row into FOLDER, with VECTORS as the embeddings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import hubembed
    from hubembed.embedder import Embedder, EmbedSettings

    class Replay(Embedder):
        """Answers each text "synthetic row I" with VECTORS[I]."""

        dimension = int(vectors.shape[1])

        def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
            return vectors[[int(t.rsplit(" ", 1)[1]) for t in texts]]

    def factory(settings: EmbedSettings) -> tuple[Embedder, dict[str, Any]]:
        return Replay(), {"model": "synthetic/random-unit-vectors", "model_origin": "benchmarks/_corpus.py"}

    source = work / "source" / "texts.parquet"
    source.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": [text(i) for i in range(len(vectors))]}), source)
    hubembed.build(str(source), str(folder), embedder_factory=factory, batch_size=8192, progress=False)
    return folder


def write_blog_csv(folder: Path, vectors: np.ndarray) -> Path:
    """The blog's artefact: embeddings.csv with columns "0".."d-1", one row per vector.

    Written by pyarrow, 8x faster than pandas' to_csv: the same header and the same float32
    values (pandas writes a few of the smallest in scientific notation).
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({str(j): vectors[:, j] for j in range(vectors.shape[1])})
    pcsv.write_csv(table, folder / "embeddings.csv", pcsv.WriteOptions(quoting_header="none"))
    return folder
