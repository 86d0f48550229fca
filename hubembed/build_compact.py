"""What --quantize and --index add to a build: compact columns written with each block, and
the ANN index built from the finished shards before the card is written (so both are
published in the build's one commit, and the card records them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .compact import Quantizer
from .errors import UsageError
from .vectors import unit_length

if TYPE_CHECKING:
    from .card import BuildRecord
    from .options import OutputSpec
    from .output import ShardOutput


def same_compact(previous: BuildRecord, spec: OutputSpec) -> bool:
    """Whether PREVIOUS has the compact copies and the index SPEC asks for."""
    kinds = (previous.quantization or {}).get("kinds") or []
    return list(kinds) == list(spec.quantize_kinds) and bool(previous.index) == spec.index


def prepare_compact(output: ShardOutput, spec: OutputSpec, previous: BuildRecord | None, model: str) -> None:
    """Hook --quantize and --index into OUTPUT. PREVIOUS, a build with the same embedding
    settings, lends its int8 ranges: a refresh quantizes new rows into the same buckets."""
    kinds = spec.quantize_kinds
    if not kinds and not spec.index:
        return
    if spec.index:
        from .ann import require_usearch

        require_usearch()  # say how to install it before any work
    quantizer = Quantizer.create(kinds, previous.quantization if previous is not None else None)
    flags = " and ".join(f for f, on in (("--quantize", bool(kinds)), ("--index", spec.index)) if on)
    write = output.write

    def checked_write(table: Any, vectors: np.ndarray, hashes: Any) -> None:
        # Sign bits, int8 buckets and an inner-product index rank rows as cosine does only for
        # unit vectors: told from the first block's norms (a model's card may not say).
        if not unit_length(vectors):
            raise UsageError(
                f"{flags} need unit-length vectors, and {model} gives vectors of other lengths: "
                "drop --no-normalize (or use a normalizing model), or drop " + flags
            )
        write(table, vectors, hashes)

    output.write = checked_write  # type: ignore[method-assign]
    output.quantizer = quantizer

    def finish(shards: list[Path], record: BuildRecord) -> None:
        if quantizer is not None:
            record.quantization = quantizer.record()
        if spec.index:
            from .ann import build_index

            assert record.hash_column is not None
            record.index = build_index(
                shards, output.staged, output.split, record.embedding_column, record.hash_column
            )

    output.before_card = finish
