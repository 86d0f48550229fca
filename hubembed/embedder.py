"""Embedders: each turns one batch of texts into vectors. Batching, retries and progress
belong to the pipeline, not here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# Forward passes per embed_batch call (a checkpoint each): enough for encode's length sorting to
# pay off, few enough that a kill loses little (benchmarks/README.md, "Embedding (CPU)").
PASSES_PER_CALL = 4


@dataclass(frozen=True)
class EmbedSettings:
    """How texts are turned into vectors. Recorded in the card, and reused for queries."""

    prompt_name: str | None = None
    prompt: str | None = None
    truncate_dim: int | None = None
    normalize: bool = True
    #: tokens the model reads, where not its own max_seq_length (--max-seq-length)
    seq_length: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Embedder(ABC):
    """One method to implement: ``embed_batch``."""

    #: the vector length: known once a local model is loaded, after the first answer for a remote one
    dimension: int | None
    #: how many batches the pipeline may have in flight at once
    max_concurrency: int = 1
    #: texts per embed_batch call, when the embedder knows better than the build's --batch-size
    #: (a local model takes several forward passes' worth, so its length sorting spans them)
    texts_per_call: int | None = None

    @abstractmethod
    def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        """Return a float32 array of shape (len(texts), dimension), rows in input order.

        TIMEOUT bounds a remote request; local embedders ignore it.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most embedders hold nothing
        """Release what the embedder holds (worker processes, connections)."""


class LocalEmbedder(Embedder):
    """sentence-transformers on this machine (CPU or GPU)."""

    def __init__(
        self,
        model: SentenceTransformer,
        settings: EmbedSettings,
        devices: list[str] | None = None,
        batch_size: int = 32,
    ) -> None:
        self.model = model
        self.settings = settings
        # Texts per forward pass. The pipeline hands over several passes' worth at once, so
        # encode's length sorting spans them; one padded pass of a whole chunk is slower.
        self.batch_size = batch_size
        # Several devices: one copy of the model on each, fed by sentence-transformers' pool.
        self._devices = devices if devices and len(devices) > 1 else None
        self.texts_per_call = batch_size * PASSES_PER_CALL * len(self._devices or [None])
        self._pool = model.start_multi_process_pool(self._devices) if self._devices else None
        prompts = model.prompts or {}
        if settings.prompt_name is not None and settings.prompt_name not in prompts:
            names = ", ".join(repr(n) for n in prompts) or "none"
            raise ModelError(
                f"the model has no prompt named {settings.prompt_name!r}; its prompts: {names} "
                "(or give a literal prompt with --prompt)"
            )
        if settings.seq_length is not None:
            model.max_seq_length = settings.seq_length
        full = model.get_embedding_dimension()
        if settings.truncate_dim is not None and not 0 < settings.truncate_dim <= (full or 0):
            raise ModelError(f"--truncate-dim {settings.truncate_dim} must be between 1 and {full}")
        self.dimension = int(settings.truncate_dim or full or 0)

    def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        share = -(-len(texts) // len(self._devices)) if self._devices else len(texts)
        extra: dict[str, Any] = {"pool": self._pool, "chunk_size": max(share, 1)} if self._pool else {}
        out = self.model.encode(
            texts,
            prompt_name=self.settings.prompt_name,
            prompt=self.settings.prompt,
            batch_size=max(min(share, self.batch_size), 1),
            **extra,
            normalize_embeddings=self.settings.normalize,
            truncate_dim=self.settings.truncate_dim,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        if self._pool is not None:
            self.model.stop_multi_process_pool(self._pool)
            self._pool = None


def query_settings(doc: EmbedSettings, prompts: Mapping[str, str | None]) -> EmbedSettings:
    """The settings for embedding search queries against vectors built with DOC.

    Asymmetric models name their prompts in pairs ("document"/"query",
    "Retrieval-document"/"Retrieval-query"): queries take the query side. A model with a
    non-empty "query" prompt uses it. Otherwise queries are embedded like the documents.
    """
    if doc.prompt_name:
        for old, new in (("document", "query"), ("Document", "Query"), ("passage", "query")):
            candidate = doc.prompt_name.replace(old, new)
            if candidate != doc.prompt_name and candidate in prompts:
                return replace(doc, prompt_name=candidate, prompt=None)
    if prompts.get("query"):
        return replace(doc, prompt_name="query", prompt=None)
    return doc
