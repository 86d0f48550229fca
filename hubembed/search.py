"""Exact top-k search: a drop-in for sentence_transformers.util.semantic_search.

Same parameters (order, names, defaults) and the same hits as util.semantic_search. Cosine
similarity (the default) and util.dot_score are found with less work per call; any other
score_function is called chunk by chunk, as util does:

- the corpus is never re-normalised: a unit-length corpus (``normalized=True``) skips norms,
  any other takes row norms computed once (``corpus_norms``, see ``row_norms``; the loader
  caches them) and scales the scores, one pass over a small buffer instead of a copy of
  the corpus;
- two passes. The first scores the corpus a chunk at a time into one reused buffer and
  keeps only the max of each block of 32 rows: two big vectorised operations per chunk
  (matmul, max), nothing per chunk that is small. The second takes, per query, the k
  blocks with the highest maxima, which hold its top k (exact: they hold k scores at least
  as high as its k-th best, so no other block can beat that, only tie it), and rescores
  their rows. torch.topk over every score adds a third to the matmul's time on CPU, and a
  dozen small operations per chunk cost more on a busy machine, where each waits for every
  thread.
- memory is bounded: one chunk of scores, one block maximum per 32 corpus rows of a
  segment of the corpus (16 MiB of them), the candidates' rows for a few queries.

fp16/bf16 (and integer) corpora are converted to float32 one chunk at a time; float64
corpora are scored in float64. Everything runs on the corpus's device (CPU or GPU).
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Hits = list[list[dict[str, Any]]]

# Rows per block: a block's max is one vectorised pass; its rows are rescored if it is chosen.
_BLOCK = 32
# Prune (two passes) when the corpus has this many times the k blocks' rows: below, one
# torch.topk per chunk is cheaper than gathering and rescoring those rows.
_PRUNE_FACTOR = 512
# Corpus rows scored at once. CPU: 100 queries x 64k rows of float32 scores (26 MB) stay in
# a big cache and make few, large operations; a GPU wants bigger launches.
_CPU_CHUNK = 65_536
_ACCELERATOR_CHUNK = 262_144
# fp16/bf16 on CPU: rows converted to float32 at once (16k x 384: 25 MB).
_CPU_CONVERT_CHUNK = 16_384
# Elements (float32: 128 MiB) in a chunk's scores; more queries than fit are taken in groups.
_SCORE_BUDGET = 1 << 25
# Elements (16 MiB) of block maxima: a bigger corpus is taken a segment at a time.
_BLOCKMAX_BUDGET = 1 << 22
# Elements (16 MiB) of candidate rows gathered for rescoring at once.
_GATHER_BUDGET = 1 << 22
# util.semantic_search's default corpus_chunk_size: what None stands for.
_UTIL_CORPUS_CHUNK = 500_000
# torch.nn.functional.normalize's eps, so zero vectors score 0 as in util.semantic_search.
_EPS = 1e-12


def cos_sim(a: Any, b: Any) -> torch.Tensor:
    """Cosine similarity of every row of A with every row of B, as sentence_transformers.util.cos_sim.

    ``semantic_search``'s default ``score_function``: with it (or util.cos_sim itself) the
    search takes the fast path below and never calls it. Defined here so that importing
    hubembed does not import sentence-transformers.
    """
    import torch

    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    normalize = torch.nn.functional.normalize
    return torch.mm(normalize(a, dim=1), normalize(b, dim=1).T)


def semantic_search(
    query_embeddings: Any,
    corpus_embeddings: Any,
    query_chunk_size: int = 100,
    corpus_chunk_size: int | None = 500_000,
    top_k: int = 10,
    score_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cos_sim,
    *,
    normalized: bool = False,
    corpus_norms: Any = None,
) -> Hits:
    """Top-k of each query over the corpus: sentence_transformers.util.semantic_search, faster.

    Same parameters, in the same order, with the same defaults, and the same answer.
    Takes tensors or arrays: QUERY_EMBEDDINGS (q x d, or one vector of d) and
    CORPUS_EMBEDDINGS (N x d, any float dtype, on any device; queries are moved to it).
    Returns, per query, ``min(top_k, N)`` hits ``{"corpus_id": int, "score": float}``, best
    first.

    ``score_function`` (default cosine similarity) scores a block of queries against a block
    of corpus rows. Cosine (``cos_sim`` here or in sentence_transformers.util) and
    util.dot_score take hubembed's fast path; any other function is called on chunks of
    ``query_chunk_size`` queries and ``corpus_chunk_size`` rows, as util does.

    On the fast path the chunk sizes bound memory as they do in util: at most
    ``corpus_chunk_size`` corpus rows, and ``query_chunk_size * corpus_chunk_size`` scores,
    at once (None: util's default). Within that, hubembed picks its own sizes (corpus chunks
    of at most 64k rows on CPU, 256k on GPU, rounded down to a multiple of 32 when pruning).

    Keyword-only, for cosine similarity only (other score functions ignore them):
    ``normalized=True`` promises the corpus rows are unit length and skips their norms;
    ``corpus_norms`` (N row norms, from ``row_norms``) saves computing them on every call.

    Raises ValueError for shapes that do not fit together, a top_k or chunk size below 1, a
    score_function that is not callable or gives scores of the wrong shape.
    """
    import torch

    queries = _as_matrix(query_embeddings, "query_embeddings")
    corpus = _as_matrix(corpus_embeddings, "corpus_embeddings")
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"query_embeddings have dimension {queries.shape[1]} but corpus_embeddings have dimension "
            f"{corpus.shape[1]}: embed the queries with the model (and truncate_dim) of the corpus"
        )
    query_chunk = _positive_int(query_chunk_size, "query_chunk_size")
    corpus_chunk = (
        _UTIL_CORPUS_CHUNK
        if corpus_chunk_size is None
        else _positive_int(corpus_chunk_size, "corpus_chunk_size")
    )
    k = _positive_int(top_k, "top_k")
    if not callable(score_function):
        raise ValueError(
            f"score_function must be a function of (queries, corpus rows) giving their scores, "
            f"got {score_function!r}"
        )
    device = corpus.device
    n = corpus.shape[0]
    dtype = torch.float64 if corpus.dtype == torch.float64 else torch.float32
    norms = None
    if corpus_norms is not None:
        norms = torch.as_tensor(corpus_norms)
        if norms.shape != (n,):
            raise ValueError(
                f"corpus_norms has shape {tuple(norms.shape)}: give one norm per corpus row, shape ({n},)"
            )
        norms = None if normalized else norms.to(device=device, dtype=dtype)
    if n == 0 or queries.shape[0] == 0:
        return [[] for _ in range(queries.shape[0])]

    with torch.no_grad():
        kind = _builtin(score_function)
        if kind is None:
            values, ids = _general(queries.to(device), corpus, k, query_chunk, corpus_chunk, score_function)
        else:
            q = queries.to(device=device, dtype=dtype)
            if kind == "cos":
                q = torch.nn.functional.normalize(q, dim=1)
            else:  # dot product: the cosine machinery without any norms
                normalized, norms = True, None
            chunk = min(corpus_chunk, _default_chunk(device))
            budget = min(_SCORE_BUDGET, query_chunk * corpus_chunk)
            scan = _Scan(corpus, q.shape[0], dtype, min(k, n), chunk, budget, normalized, norms)
            groups = [scan.search(q[a : a + scan.group]) for a in range(0, q.shape[0], scan.group)]
            values = torch.cat([v for v, _ in groups])
            ids = torch.cat([i for _, i in groups])
        values, order = values.sort(dim=1, descending=True)
        ids = ids.gather(1, order)
    return [
        [{"corpus_id": i, "score": s} for i, s in zip(row_ids, row_scores, strict=True)]
        for row_ids, row_scores in zip(ids.cpu().tolist(), values.cpu().tolist(), strict=True)
    ]


def _builtin(score_function: Callable[..., Any]) -> str | None:
    """The fast path's name ("cos", "dot") for SCORE_FUNCTION, or None if it has none."""
    if score_function is cos_sim:
        return "cos"
    util = sys.modules.get("sentence_transformers.util")  # imported if the caller passed one of its functions
    if util is not None:
        if score_function is getattr(util, "cos_sim", None):
            return "cos"
        if score_function is getattr(util, "dot_score", None):
            return "dot"
    return None


def _general(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    query_chunk: int,
    corpus_chunk: int,
    score_function: Callable[[torch.Tensor, torch.Tensor], Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Any score function, chunked as util.semantic_search: the k best (values, ids) per query."""
    import torch

    n = corpus.shape[0]
    parts = []
    for a in range(0, queries.shape[0], query_chunk):
        chunk_queries = queries[a : a + query_chunk]
        best = None
        for start in range(0, n, corpus_chunk):
            rows = corpus[start : start + corpus_chunk]
            scores = torch.as_tensor(score_function(chunk_queries, rows))
            if scores.shape != (chunk_queries.shape[0], rows.shape[0]):
                raise ValueError(
                    f"score_function gave scores of shape {tuple(scores.shape)} for "
                    f"{chunk_queries.shape[0]} queries and {rows.shape[0]} corpus rows: it must give "
                    f"one score per pair, shape ({chunk_queries.shape[0]}, {rows.shape[0]})"
                )
            values, ids = scores.topk(min(k, rows.shape[0]), dim=1, sorted=False)
            best = _merge(best, values, ids + start, k)
        assert best is not None
        parts.append(best)
    return torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])


class _Scan:
    """One search's buffers and settings; ``search`` answers one group of queries."""

    def __init__(
        self,
        corpus: torch.Tensor,
        queries: int,
        dtype: torch.dtype,
        k: int,
        chunk: int,
        budget: int,
        normalized: bool,
        norms: torch.Tensor | None,
    ) -> None:
        import torch

        n, d = corpus.shape
        self.corpus, self.dtype, self.k, self.normalized, self.norms = corpus, dtype, k, normalized, norms
        # Pruning pays when the rows of k blocks, rescored one query at a time (a gather per
        # row), are a small part of the corpus, scored by one matmul for all queries.
        self.pruned = n >= _PRUNE_FACTOR * k * _BLOCK
        if corpus.dtype != dtype and corpus.device.type == "cpu":
            chunk = min(chunk, _CPU_CONVERT_CHUNK)  # the float32 copy of a chunk is the big buffer
        self.chunk = min(n, max(_BLOCK, chunk - chunk % _BLOCK) if self.pruned else chunk)
        self.group = max(1, min(queries, budget // self.chunk))
        device = corpus.device
        self.scores = torch.empty(self.group * self.chunk, dtype=dtype, device=device)
        self.converted = (
            torch.empty((self.chunk, d), dtype=dtype, device=device) if corpus.dtype != dtype else None
        )
        self.offsets = torch.arange(_BLOCK, device=device)

    def search(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best (values, ids) of each query in Q, unsorted."""
        n = self.corpus.shape[0]
        if not self.pruned:
            best = None
            for start in range(0, n, self.chunk):
                scores = self._score(q, start)
                values, ids = scores.topk(min(self.k, scores.shape[1]), dim=1, sorted=False)
                best = _merge(best, values, ids + start, self.k)
            assert best is not None
            return best
        blocks = max(1, _BLOCKMAX_BUDGET // q.shape[0])
        segment = self.chunk * max(1, blocks * _BLOCK // self.chunk)
        best = None
        for start in range(0, n, segment):
            end = min(n, start + segment)
            values, ids = self._rescore(q, self._block_maxima(q, start, end), start, end)
            best = _merge(best, values, ids, self.k)
        assert best is not None
        return best

    def _score(self, q: torch.Tensor, start: int) -> torch.Tensor:
        """Cosine scores of Q against the chunk at START, in the reused buffer."""
        import torch

        rows = self.corpus[start : start + self.chunk]
        m = rows.shape[0]
        if self.converted is not None:
            rows = self.converted[:m].copy_(rows)
        scores = self.scores[: q.shape[0] * m].view(q.shape[0], m)
        torch.mm(q, rows.T, out=scores)
        if not self.normalized:
            norms = self.norms[start : start + m] if self.norms is not None else _norms(rows)
            scores.mul_(norms.clamp_min(_EPS).reciprocal())
        return scores

    def _block_maxima(self, q: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Pass 1: the best score in each block of _BLOCK rows from START to END, per query."""
        import torch

        maxima = torch.empty((q.shape[0], -(-(end - start) // _BLOCK)), dtype=self.dtype, device=q.device)
        for at in range(start, end, self.chunk):
            scores = self._score(q, at)[:, : end - at]
            whole, col = scores.shape[1] // _BLOCK, (at - start) // _BLOCK
            body = scores[:, : whole * _BLOCK].view(q.shape[0], whole, _BLOCK)
            torch.amax(body, dim=2, out=maxima[:, col : col + whole])
            if whole * _BLOCK < scores.shape[1]:  # the corpus's last, partial block
                maxima[:, col + whole] = scores[:, whole * _BLOCK :].amax(dim=1)
        return maxima

    def _rescore(
        self, q: torch.Tensor, maxima: torch.Tensor, start: int, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pass 2: rescore the rows of each query's k best blocks; their k best (values, ids)."""
        import torch

        chosen = maxima.topk(min(self.k, maxima.shape[1]), dim=1, sorted=False).indices
        ids = (start + chosen.unsqueeze(2) * _BLOCK + self.offsets).flatten(1)
        outside = ids >= end  # rows past the end of a partial last block
        ids.clamp_(max=end - 1)
        scores = torch.empty(ids.shape, dtype=self.dtype, device=q.device)
        width, d = ids.shape[1], q.shape[1]
        step = max(1, _GATHER_BUDGET // (width * d))
        # One gather buffer, reused: fresh memory costs a page fault per 4 KiB on first touch.
        gathered = torch.empty(min(step, q.shape[0]) * width * d, dtype=self.corpus.dtype, device=q.device)
        for a in range(0, q.shape[0], step):
            picked = ids[a : a + step]
            rows = gathered[: picked.numel() * d].view(picked.numel(), d)
            torch.index_select(self.corpus, 0, picked.flatten(), out=rows)
            rows = rows.view(*picked.shape, d).to(self.dtype)
            part = torch.bmm(rows, q[a : a + step].unsqueeze(2)).squeeze(2)
            if not self.normalized:
                norms = self.norms[picked] if self.norms is not None else _norms(rows, dim=2)
                part.mul_(norms.clamp_min(_EPS).reciprocal())
            scores[a : a + step] = part
        scores.masked_fill_(outside, float("-inf"))
        values, picked = scores.topk(min(self.k, end - start), dim=1, sorted=False)
        return values, ids.gather(1, picked)


def _merge(
    best: tuple[torch.Tensor, torch.Tensor] | None, values: torch.Tensor, ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    if best is not None:
        values, ids = torch.cat([best[0], values], dim=1), torch.cat([best[1], ids], dim=1)
    if values.shape[1] > k:
        values, keep = values.topk(k, dim=1, sorted=False)
        ids = ids.gather(1, keep)
    return values, ids


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


def _norms(rows: torch.Tensor, dim: int = 1) -> torch.Tensor:
    import torch

    return torch.linalg.vector_norm(rows, dim=dim)


def _default_chunk(device: torch.device) -> int:
    return _CPU_CHUNK if device.type == "cpu" else _ACCELERATOR_CHUNK


def _positive_int(value: Any, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if number < 1:
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
