"""Exact top-k search, with the same answer shape as sentence_transformers.util.semantic_search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Hits = list[list[dict[str, Any]]]


def _as_2d_float(x: Any) -> torch.Tensor:
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"expected a vector or a matrix of vectors, got shape {tuple(t.shape)}")
    return t


def semantic_search(
    query_embeddings: Any,
    corpus_embeddings: Any,
    top_k: int = 10,
    *,
    corpus_chunk_size: int = 262_144,
    normalized: bool = False,
) -> Hits:
    """Cosine-similarity top-k of each query over the corpus.

    Takes tensors or arrays (N x d; a single vector is one query); fp16/bf16 corpora are
    scored in float32 one chunk at a time, so memory stays bounded by the chunk size.
    ``normalized=True`` says the corpus rows are unit length already and skips their norms.
    Returns, per query, a list of ``{"corpus_id": int, "score": float}``, best first.
    """
    import torch

    queries = _as_2d_float(query_embeddings)
    corpus = _as_2d_float(corpus_embeddings)
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"query dimension {queries.shape[1]} does not match corpus dimension {corpus.shape[1]}"
        )
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    k = min(top_k, corpus.shape[0])
    q = torch.nn.functional.normalize(queries.to(corpus.device, torch.float32), dim=1)
    best_scores = torch.full((q.shape[0], 0), float("-inf"), device=corpus.device)
    best_ids = torch.empty((q.shape[0], 0), dtype=torch.long, device=corpus.device)
    for start in range(0, corpus.shape[0], corpus_chunk_size):
        chunk = corpus[start : start + corpus_chunk_size].to(torch.float32)
        scores = q @ chunk.T
        if not normalized:
            scores /= chunk.norm(dim=1).clamp_min(1e-12)
        top_scores, top_ids = scores.topk(min(k, chunk.shape[0]), dim=1)
        best_scores = torch.cat([best_scores, top_scores], dim=1)
        best_ids = torch.cat([best_ids, top_ids + start], dim=1)
        if best_scores.shape[1] > k:
            best_scores, keep = best_scores.topk(k, dim=1)
            best_ids = best_ids.gather(1, keep)
    scores_list = best_scores.cpu().tolist()
    ids_list = best_ids.cpu().tolist()
    return [
        [{"corpus_id": int(i), "score": float(s)} for i, s in zip(ids, row, strict=True)]
        for ids, row in zip(ids_list, scores_list, strict=True)
    ]
