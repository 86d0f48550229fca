"""Compact copies of the vectors, stored beside the float32 column (``--quantize``).

- ``int8``: each dimension cut into 256 buckets between a minimum and a maximum, as
  sentence-transformers' ``quantize_embeddings(..., precision="int8", calibration_embeddings=...)``
  does. The ranges are fixed once, from the first block of vectors, and recorded in the card: a
  refresh reuses them, so a new row lands in the same buckets as the old rows did, and a query
  is quantized with them too. Values outside a range are clipped to it.
- ``binary``: the sign of each dimension (> 0), packed 8 to a byte (np.packbits): d/8 bytes.
- ``float16``: the vectors at half precision.

The copies are written a block at a time with the rows (hubembed/output.py), so they cost no
extra pass and no extra memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa

KINDS = ("int8", "binary", "float16")
_TYPES = {"int8": "int8", "binary": "uint8", "float16": "float16"}


def parse_kinds(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The quantization kinds of VALUE ("int8,binary" or a list), in KINDS' order; UsageError
    for an unknown one."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    kinds = {k.strip().lower() for k in items if k.strip()}
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise UsageError(
            f"unknown --quantize kind {', '.join(map(repr, unknown))}; use any of {', '.join(KINDS)}"
        )
    if not kinds:
        raise UsageError(f"--quantize needs at least one of {', '.join(KINDS)}")
    return tuple(k for k in KINDS if k in kinds)


def column_name(kind: str, embedding_column: str = config.EMBEDDING_COLUMN) -> str:
    return f"{embedding_column}_{kind}"


def int8_codes(vectors: np.ndarray, starts: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """VECTORS in the int8 buckets of STARTS and STEPS (sentence-transformers' formula)."""
    scaled = (np.asarray(vectors, dtype=np.float32) - starts) / steps - 128
    return np.clip(np.floor(scaled), -128, 127).astype(np.int8)


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """The sign bits of VECTORS, 8 dimensions a byte, as sentence-transformers' "ubinary"."""
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


@dataclass
class Quantizer:
    """Makes a block's compact columns; the int8 ranges are fixed by the first block seen
    (or given, from the previous build's card)."""

    kinds: tuple[str, ...]
    minimum: np.ndarray | None = None
    maximum: np.ndarray | None = None
    calibration_rows: int = 0
    embedding_column: str = config.EMBEDDING_COLUMN
    _steps: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def create(cls, kinds: tuple[str, ...], previous: dict[str, Any] | None) -> Quantizer | None:
        """A quantizer for KINDS, reusing the int8 ranges PREVIOUS (a card's ``quantization``)
        records; None when KINDS is empty."""
        if not kinds:
            return None
        q = cls(kinds)
        ranges = (previous or {}).get("int8_ranges")
        if "int8" in kinds and ranges:
            q.minimum = np.asarray(ranges["min"], dtype=np.float32)
            q.maximum = np.asarray(ranges["max"], dtype=np.float32)
            q.calibration_rows = int(ranges.get("calibration_rows", 0))
        return q

    def fields(self, dimension: int) -> list[pa.Field]:
        import pyarrow as pa

        sizes = {"int8": dimension, "binary": (dimension + 7) // 8, "float16": dimension}
        return [
            pa.field(
                column_name(k, self.embedding_column),
                pa.list_(pa.from_numpy_dtype(np.dtype(_TYPES[k])), sizes[k]),
            )
            for k in self.kinds
        ]

    def columns(self, vectors: np.ndarray) -> dict[str, pa.Array]:
        """The compact columns of VECTORS (one block), name -> fixed-size list array."""
        import pyarrow as pa

        if "int8" in self.kinds and self.minimum is None:
            # Calibrated on the first block, as sentence-transformers calibrates on a sample:
            # a block is up to 32,768 rows, enough to see each dimension's spread.
            self.minimum = vectors.min(axis=0).astype(np.float32)
            self.maximum = vectors.max(axis=0).astype(np.float32)
            self.calibration_rows = len(vectors)
        if self.minimum is not None and self.maximum is not None and self._steps is None:
            if len(self.minimum) != vectors.shape[1]:
                raise UsageError(
                    f"the card's int8 ranges are {len(self.minimum)}-d but the vectors are "
                    f"{vectors.shape[1]}-d: pass --force to quantize afresh"
                )
            self._steps = np.maximum(self.maximum - self.minimum, 1e-12) / 255
        out = {}
        for kind in self.kinds:
            if kind == "int8":
                assert self.minimum is not None and self._steps is not None
                codes = int8_codes(vectors, self.minimum, self._steps)
            elif kind == "binary":
                codes = binary_codes(vectors)
            else:
                codes = vectors.astype(np.float16)
            flat = pa.array(codes.reshape(-1))
            out[column_name(kind, self.embedding_column)] = pa.FixedSizeListArray.from_arrays(
                flat, codes.shape[1]
            )
        return out

    def record(self) -> dict[str, Any]:
        """What the card records: the kinds, their columns, the int8 ranges."""
        meta: dict[str, Any] = {
            "kinds": list(self.kinds),
            "columns": {k: column_name(k, self.embedding_column) for k in self.kinds},
        }
        if self.minimum is not None and self.maximum is not None:
            meta["int8_ranges"] = {
                "min": [float(v) for v in self.minimum],
                "max": [float(v) for v in self.maximum],
                "calibration_rows": self.calibration_rows,
            }
        return meta


def query_int8(queries: np.ndarray, ranges: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension weights for scoring int8 codes against QUERIES: a code c in dimension j
    stands for min_j + (c + 128.5) * step_j, so q . x = sum_j (q_j step_j) c_j + a term that
    is the same for every row; ranking by the first sum needs the weights q_j step_j only."""
    minimum = np.asarray(ranges["min"], dtype=np.float32)
    steps = np.maximum(np.asarray(ranges["max"], dtype=np.float32) - minimum, 1e-12) / 255
    return np.asarray(queries, dtype=np.float32) * steps, steps
