"""Exact top-k search, with the same answer shape as sentence_transformers.util.semantic_search.

Same scores as util.semantic_search (cosine similarity), found with less work per call:

- the corpus is never re-normalised: a unit-length corpus (``normalized=True``) skips norms,
  any other takes row norms computed once (``corpus_norms``, see ``row_norms``; the loader
  caches them) and scales the scores, which is one pass over a small buffer instead of a copy
  of the corpus;
- the corpus is scored a chunk at a time into one reused buffer small enough to stay in
  cache, so memory is bounded by the chunk size, whatever the corpus size or dtype;
- each chunk's top-k comes from its best blocks: the row-wise max of blocks of 64 scores
  (a vectorised pass) picks the k blocks that can hold the top k, and only those are
  ranked. torch.topk over the whole chunk costs about twice as much on CPU.

fp16/bf16 (and integer) corpora are converted to float32 one chunk at a time; float64
corpora are scored in float64. Everything runs on the corpus's device (CPU or GPU).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Hits = list[list[dict[str, Any]]]

# Scores are ranked in blocks of this many: the block max is a cheap vectorised pass.
_BLOCK = 64
# Corpus rows per chunk: on CPU, 100 queries x 32k rows of float32 scores (13 MB) stay in
# cache; a GPU wants bigger launches.
_CPU_CHUNK = 32_768
_ACCELERATOR_CHUNK = 262_144
# At most this many scores (float32: 128 MiB) at once: many queries are taken in blocks.
_SCORE_BUDGET = 1 << 25
# torch.nn.functional.normalize's eps, so zero vectors score 0 as in util.semantic_search.
_EPS = 1e-12


def semantic_search(
    query_embeddings: Any,
    corpus_embeddings: Any,
    top_k: int = 10,
    *,
    corpus_chunk_size: int | None = None,
    normalized: bool = False,
    corpus_norms: Any = None,
) -> Hits:
    """Cosine-similarity top-k of each query over the corpus.

    Takes tensors or arrays: QUERY_EMBEDDINGS (q x d, or one vector of d) and
    CORPUS_EMBEDDINGS (N x d, any float dtype, on any device; queries are moved to it).
    ``normalized=True`` promises the corpus rows are unit length and skips their norms;
    ``corpus_norms`` (N row norms, from ``row_norms``) saves computing them on every call.
    ``corpus_chunk_size`` rows are scored at a time (default: 32k on CPU, 256k on GPU).
    Returns, per query, ``min(top_k, N)`` hits ``{"corpus_id": int, "score": float}``, best
    first. Raises ValueError for shapes that do not fit together or a top_k below 1.
    """
    import torch

    queries = _as_matrix(query_embeddings, "query_embeddings")
    corpus = _as_matrix(corpus_embeddings, "corpus_embeddings")
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"query_embeddings have dimension {queries.shape[1]} but corpus_embeddings have dimension "
            f"{corpus.shape[1]}: embed the queries with the model (and truncate_dim) of the corpus"
        )
    k = _positive_int(top_k, "top_k")
    device = corpus.device
    chunk = (
        _default_chunk(device)
        if corpus_chunk_size is None
        else _positive_int(corpus_chunk_size, "corpus_chunk_size")
    )
    n = corpus.shape[0]
    if n == 0 or queries.shape[0] == 0:
        return [[] for _ in range(queries.shape[0])]
    chunk = min(chunk, n)
    k = min(k, n)
    dtype = torch.float64 if corpus.dtype == torch.float64 else torch.float32
    norms = None
    if corpus_norms is not None and not normalized:
        norms = torch.as_tensor(corpus_norms)
        if norms.shape != (n,):
            raise ValueError(
                f"corpus_norms has shape {tuple(norms.shape)}: give one norm per corpus row, shape ({n},)"
            )
        norms = norms.to(device=device, dtype=dtype)

    with torch.no_grad():
        q = torch.nn.functional.normalize(queries.to(device=device, dtype=dtype), dim=1)
        per_block = max(1, min(q.shape[0], _SCORE_BUDGET // chunk))
        blocks = [(a, min(a + per_block, q.shape[0])) for a in range(0, q.shape[0], per_block)]
        scores_buffer = torch.empty(per_block * chunk, dtype=dtype, device=device)
        converted = (
            torch.empty((chunk, corpus.shape[1]), dtype=dtype, device=device)
            if corpus.dtype != dtype
            else None
        )
        offsets = torch.arange(_BLOCK, device=device)
        best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(blocks)
        for start in range(0, n, chunk):
            rows = corpus[start : start + chunk]
            m = rows.shape[0]
            if converted is not None:
                rows = converted[:m].copy_(rows)
            inverse = None
            if not normalized:
                row_norm = norms[start : start + m] if norms is not None else _norms(rows)
                inverse = row_norm.clamp_min(_EPS).reciprocal()
            for b, (a, z) in enumerate(blocks):
                scores = scores_buffer[: (z - a) * m].view(z - a, m)
                torch.mm(q[a:z], rows.T, out=scores)
                if inverse is not None:
                    scores.mul_(inverse)
                values, ids = _top(scores, k, offsets)
                ids += start
                previous = best[b]
                if previous is not None:
                    values = torch.cat([previous[0], values], dim=1)
                    ids = torch.cat([previous[1], ids], dim=1)
                    if values.shape[1] > k:
                        values, keep = values.topk(k, dim=1, sorted=False)
                        ids = ids.gather(1, keep)
                best[b] = (values, ids)
        done = [pair for pair in best if pair is not None]
        values = torch.cat([v for v, _ in done])
        ids = torch.cat([i for _, i in done])
        values, order = values.sort(dim=1, descending=True)
        ids = ids.gather(1, order)
    return [
        [{"corpus_id": i, "score": s} for i, s in zip(row_ids, row_scores, strict=True)]
        for row_ids, row_scores in zip(ids.cpu().tolist(), values.cpu().tolist(), strict=True)
    ]


def row_norms(embeddings: Any, *, chunk_size: int = 65_536) -> torch.Tensor:
    """The L2 norm of each row of EMBEDDINGS (N x d), in float32 (float64 for float64 input).

    Computed a chunk at a time, so an fp16 corpus is never copied whole to float32. Pass the
    result to ``semantic_search(..., corpus_norms=...)`` to compute it once per corpus.
    """
    import torch

    corpus = _as_matrix(embeddings, "embeddings")
    dtype = torch.float64 if corpus.dtype == torch.float64 else torch.float32
    out = torch.empty(corpus.shape[0], dtype=dtype, device=corpus.device)
    with torch.no_grad():
        for start in range(0, corpus.shape[0], chunk_size):
            out[start : start + chunk_size] = _norms(corpus[start : start + chunk_size].to(dtype))
    return out


def _norms(rows: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.linalg.vector_norm(rows, dim=1)


def _top(scores: torch.Tensor, k: int, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each row of SCORES, unsorted, as (values, column ids).

    Exact: the k blocks with the highest maxima hold k scores at least as high as the
    k-th best, so no score of another block can beat it (it can only tie).
    """
    import torch

    rows, m = scores.shape
    k = min(k, m)
    whole = m // _BLOCK
    if whole < 4 * k:  # too few blocks for the pruning to pay off
        return scores.topk(k, dim=1, sorted=False)
    body = scores[:, : whole * _BLOCK].view(rows, whole, _BLOCK)
    _, chosen = body.amax(dim=2).topk(k, dim=1, sorted=False)
    candidates = body.gather(1, chosen.unsqueeze(2).expand(rows, k, _BLOCK)).view(rows, k * _BLOCK)
    candidate_ids = (chosen.unsqueeze(2) * _BLOCK + offsets).view(rows, k * _BLOCK)
    if whole * _BLOCK < m:  # the last, partial block: every score in it is a candidate
        tail = torch.arange(whole * _BLOCK, m, device=scores.device)
        candidates = torch.cat([candidates, scores[:, whole * _BLOCK :]], dim=1)
        candidate_ids = torch.cat([candidate_ids, tail.expand(rows, -1)], dim=1)
    values, picked = candidates.topk(k, dim=1, sorted=False)
    return values, candidate_ids.gather(1, picked)


def _default_chunk(device: torch.device) -> int:
    return _CPU_CHUNK if device.type == "cpu" else _ACCELERATOR_CHUNK


def _positive_int(value: Any, name: str) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if isinstance(value, bool) or number < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}")
    return number


def _as_matrix(x: Any, name: str) -> torch.Tensor:
    import torch

    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{name} must be a tensor or an array of numbers: {exc}") from None
    if t.layout != torch.strided:
        raise ValueError(f"{name} is a sparse tensor: pass a dense one (.to_dense())")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold real numbers, got {t.dtype}")
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(
            f"{name} must be a vector or a matrix of vectors (n x d), got shape {tuple(t.shape)}"
        )
    return t
