"""Load an embedded dataset (ours, or the blog's bare embeddings.csv) and search it."""

from __future__ import annotations

import logging
import sys
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _hub, config
from .card import read_metadata
from .embedder import Embedder, EmbedSettings
from .errors import ColumnError, HubUnreachableError, SourceError
from .search import semantic_search
from .source import FILE_BUILDERS
from .vectors import PUBLISHED_FOLDER, cached_matrix, fingerprint, matrix

if TYPE_CHECKING:
    from collections.abc import Sequence

    import datasets
    import torch

    from .classify import Classification
    from .maps import Map

log = logging.getLogger("hubembed")


class EmbeddedDataset:
    """An embedded dataset: rows, their vectors, and how they were made.

    ``dataset`` is a datasets.Dataset; ``embeddings`` an N x d float32 tensor; ``metadata``
    what the card records ({} for a dataset without a hubembed card).
    """

    def __init__(
        self,
        dataset: datasets.Dataset | None,
        metadata: dict[str, Any],
        *,
        model: str | None = None,
        token: str | None = None,
        device: str = "auto",
        trust_remote_code: bool = False,
        shards: tuple[str, list[Path]] | None = None,
        ref: str | None = None,
    ) -> None:
        # SHARDS, (location, parquet files), stands in for DATASET until something needs the
        # rows: the vectors then come from the decoded-vector cache (hubembed/vectors.py).
        if dataset is None and not shards:
            raise ValueError("give a dataset or its parquet shards")
        self._dataset = dataset
        self._shards = shards
        self.ref = ref  # what it was loaded from: a repo id or a path
        self.metadata = metadata
        self._model = model
        self._token = token
        self._device = device
        self._trust_remote_code = trust_remote_code
        self.embedding_columns = _embedding_columns(self._column_names, metadata)

    def __repr__(self) -> str:
        meta = self.metadata
        parts = [repr(self.ref)] if self.ref else []
        if meta.get("rows") is not None:
            parts.append(f"rows={meta['rows']}")
        if meta.get("dimension"):
            parts.append(f"dimension={meta['dimension']}")
        parts.append(f"model={meta.get('model')!r}" if meta.get("model") else "model=unknown")
        source = meta.get("source") or {}
        if source.get("id"):
            parts.append(f"source='{source['id']}@{str(source.get('revision'))[:12]}'")
        return f"EmbeddedDataset({', '.join(parts)})"

    @property
    def dataset(self) -> datasets.Dataset:
        """The rows, vectors included, as a datasets.Dataset (read on first use)."""
        if self._dataset is None:
            assert self._shards is not None
            self._dataset = _read_files(self._shards[1])
        return self._dataset

    @dataset.setter
    def dataset(self, value: datasets.Dataset) -> None:
        # New rows: what was derived from the old ones no longer holds.
        self._dataset, self._shards = value, None
        for derived in ("embeddings", "_corpus_norms", "_rows", "_matrix", "_numpy_norms", "_compact"):
            self.__dict__.pop(derived, None)

    @property
    def shard_files(self) -> list[Path] | None:
        """The parquet shards the rows are read from, for a build loaded by hubembed; else None."""
        return list(self._shards[1]) if self._shards is not None else None

    @property
    def _column_names(self) -> list[str]:
        if self._shards is not None:
            import pyarrow.parquet as pq

            return list(pq.read_schema(self._shards[1][0]).names)
        return list(self.dataset.column_names)

    @property
    def text_column(self) -> str | None:
        """The column a hit is shown by: the embedded text (a chunk's, for a chunked build)."""
        column = "chunk" if self.chunked else (self.metadata.get("source") or {}).get("column")
        return column if column in self._column_names else None

    @property
    def chunked(self) -> bool:
        """One row per chunk of each source text (built with --chunk and no --pool)."""
        chunking = self.metadata.get("chunking") or {}
        return bool(chunking) and not chunking.get("pool") and "source_row" in self._column_names

    @cached_property
    def embeddings(self) -> torch.Tensor:
        """The vectors as one N x d float32 tensor.

        A dataset loaded by ``hubembed.load`` from parquet shards (a folder built by hubembed,
        or a Hub repo) maps its vectors from hubembed's cache, decoded from the shards on the
        first load, copy-on-write: edits to the tensor stay in this process. Otherwise one
        in-memory chunk of float32 vectors is shared with the dataset's Arrow column (treat the
        tensor as read-only; ``.clone()`` before editing it in place), and anything else is
        copied chunk by chunk.
        """
        import torch

        if self._shards is not None and len(self.embedding_columns) == 1:
            location, files = self._shards
            return torch.from_numpy(cached_matrix(location, files, self.embedding_columns[0]))
        return torch.from_numpy(matrix(self._table, self.embedding_columns))

    @property
    def _table(self) -> Any:
        """The rows as one pyarrow Table, in the dataset's order (an indices mapping applied)."""
        if self.dataset._indices is not None:
            return self.dataset.with_format("arrow")[:]
        return self.dataset.data.table

    def column(self, name: str) -> Any:
        """One column as a pyarrow ChunkedArray, read alone where the rows are still on disk."""
        return self._columns([name]).column(name)

    def _columns(self, names: list[str]) -> Any:
        """NAMES as a pyarrow Table: from the shards alone where there are shards."""
        if self._shards is None:
            return self._table.select(names)
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pa.concat_tables(pq.read_table(f, columns=names, memory_map=True) for f in self._shards[1])

    @cached_property
    def _rows(self) -> Any:
        """What a hit shows, as a pyarrow Table: the user's columns, not the vector, nor our
        bookkeeping hash. Read from the shards without their vectors where there are shards."""
        compact = (self.metadata.get("quantization") or {}).get("columns") or {}
        hidden = [*self.embedding_columns, self.metadata.get("hash_column"), *compact.values()]
        shown = [c for c in self._column_names if c not in hidden]
        if self.metadata.get("layout") == "blog":
            shown = []
        return self._columns(shown)

    @cached_property
    def _corpus_norms(self) -> torch.Tensor | None:
        """The row norms of ``embeddings``, computed once; None when all are 1 (to 1e-6).

        Checked rather than read from the card, whose ``normalized`` allows 1e-3.
        """
        from .search import row_norms

        norms = row_norms(self.embeddings)
        return None if bool(((norms - 1).abs() <= 1e-6).all()) else norms

    @cached_property
    def _embedder(self) -> Embedder:
        from .models import resolve_model
        from .query import query_embedder

        meta = self.metadata
        model_id = self._model or meta.get("model")
        if model_id is None:
            model_id = config.DEFAULT_MODEL
            log.warning("no hubembed card records the model: embedding queries with %s", model_id)
        revision = meta.get("model_revision") if not self._model else None
        resolved = resolve_model(model_id, revision=revision, token=self._token)
        settings = EmbedSettings(
            prompt_name=meta.get("query_prompt_name"),
            prompt=meta.get("query_prompt"),
            truncate_dim=meta.get("truncate_dim"),
            normalize=bool(meta.get("normalize", True)),
        )
        documents = None
        if settings.prompt_name is None and settings.prompt is None:
            # A remote build could not see the model's prompts: derive the query side from them.
            documents = EmbedSettings(
                meta.get("prompt_name"), meta.get("prompt"), settings.truncate_dim, settings.normalize
            )
        # The model's cached ONNX export where there is one (no torch); else sentence-transformers,
        # recording the model for the next search (hubembed/query.py).
        return query_embedder(
            resolved,
            settings,
            documents=documents,
            device=self._device,
            token=self._token,
            trust_remote_code=self._trust_remote_code,
        )

    @cached_property
    def _matrix(self) -> np.ndarray:
        """``embeddings`` as numpy, for a search that needs no torch."""
        if self._shards is not None and len(self.embedding_columns) == 1:
            location, files = self._shards
            return cached_matrix(location, files, self.embedding_columns[0])
        return matrix(self._table, self.embedding_columns)

    @cached_property
    def _numpy_norms(self) -> np.ndarray | None:
        """``_corpus_norms`` for ``_matrix``: None when every row has length 1 (to 1e-6)."""
        m = self._matrix
        norms = np.empty(len(m), dtype=np.float32)
        for a in range(0, len(m), 65_536):
            rows = np.asarray(m[a : a + 65_536], dtype=np.float32)
            norms[a : a + 65_536] = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        return None if bool((np.abs(norms - 1) <= 1e-6).all()) else norms

    def embed_queries(self, queries: list[str]) -> torch.Tensor:
        """Embed search queries with the model, query prompt and settings the card records."""
        import torch

        return torch.from_numpy(self._embedder.embed_batch(queries))

    def classify(self, labels: str | Sequence[str], **kwargs: Any) -> Classification:
        """Each row's nearest of LABELS by cosine, with the model's classification prompt where
        it has one (hubembed/classify.py)."""
        from .classify import classify

        return classify(self, labels, **kwargs)

    def map(self) -> Map:
        """A 2-D map of the rows (not published): coordinates, labelled regions and a picture
        (hubembed/maps.py; needs hubembed[map])."""
        from .maps import map_index

        return map_index(self)

    def search(
        self,
        query: Any,
        top_k: int = 10,
        *,
        by_text: bool = True,
        mode: str | None = None,
        rescore: int | None = None,
    ) -> Any:
        """Top-k rows for QUERY: a string, a list of strings, or a tensor/array of vectors.

        MODE is ``exact`` (every float32 vector), ``ann`` (the index built with --index),
        ``int8`` or ``binary`` (the copies built with --quantize); the last three rescore their
        best ``RESCORE x top_k`` candidates in float32 (hubembed/modes.py). The default is the
        best the dataset has (``search_modes[0]``). UsageError for a mode it does not have.

        A single query (a string or one vector) gives a list of hits; several give a list per
        query. Each hit is ``{"corpus_id", "score", "row"}``, best first. For a chunked build,
        each hit is a source text, by its best chunk: ``"document"`` (its source row, 0-based)
        and ``"passage"`` ({"text", "chunk_index", "start", "end"}: character offsets in the
        text) are added; ``by_text=False`` gives the chunks themselves.
        """
        single = isinstance(query, str) or (not isinstance(query, list) and np.ndim(query) == 1)
        if isinstance(query, str):
            query = [query]
        from .modes import DEFAULT_RESCORE, check_mode, require

        check_mode(mode, rescore)
        mode = mode or self.search_modes[0]
        require(self.metadata, mode, self.ref)
        vectors: Any = query
        if isinstance(query, list) and all(isinstance(q, str) for q in query):
            vectors = self._embedder.embed_batch(query)
        fetch: Any = self._top_k
        if mode != "exact":
            times = rescore or DEFAULT_RESCORE[mode]
            vectors = np.asarray(vectors.cpu() if hasattr(vectors, "cpu") else vectors, dtype=np.float32)
            vectors = vectors.reshape(-1, vectors.shape[-1])
            fetch = lambda v, k: self._compact.top_k(v, k, mode, times)  # noqa: E731
        hits = fetch(vectors, top_k)
        if self.chunked and by_text:
            hits = self._best_chunks(hits, vectors, top_k, fetch)
        # A hit's row holds the user's columns: not the vector, nor our bookkeeping hash.
        # One Arrow take for all hits, instead of a row lookup per hit.
        ids = [hit["corpus_id"] for per_query in hits for hit in per_query]
        rows = self._rows
        picked = rows.take(ids).to_pylist() if rows.num_columns and ids else [{}] * len(ids)
        found = iter(picked)
        for per_query in hits:
            for hit in per_query:
                hit["row"] = next(found)
                if self.chunked and by_text:
                    row = hit["row"]
                    hit["passage"] = {
                        "text": row.pop("chunk"),
                        "chunk_index": row.pop("chunk_index"),
                        "start": row.pop("chunk_start"),
                        "end": row.pop("chunk_end"),
                    }
                    hit["document"] = row.pop("source_row")
        return hits[0] if single else hits

    @property
    def search_modes(self) -> list[str]:
        """The search modes this dataset has, best first: ann (an index), binary and int8
        (compact copies), exact."""
        from .modes import available

        return available(self.metadata)

    @cached_property
    def _compact(self) -> Any:
        from .modes import CompactSearch

        return CompactSearch(self)

    def column_matrix(self, name: str) -> np.ndarray:
        """A fixed-size list column (a compact copy of the vectors) as an n x width array of its
        own type, read alone from the shards."""
        import pyarrow as pa

        column = self.column(name)
        width = column.type.list_size
        values = pa.concat_arrays([c.flatten() for c in column.chunks]) if column.num_chunks else None
        if values is None:
            return np.empty((0, width))
        return values.to_numpy(zero_copy_only=False).reshape(-1, width)

    def _top_k(self, vectors: Any, top_k: int) -> list[list[dict[str, Any]]]:
        """The top_k rows of each of VECTORS: through torch where something has imported it,
        else numpy (a query embedded by the ONNX export spares torch's import)."""
        if "torch" in sys.modules:
            import torch

            vectors = torch.as_tensor(np.asarray(vectors) if isinstance(vectors, list) else vectors)
            norms = self._corpus_norms
            return semantic_search(
                vectors, self.embeddings, top_k=top_k, normalized=norms is None, corpus_norms=norms
            )
        from .query import search_numpy

        numpy_norms = self._numpy_norms
        return search_numpy(
            np.asarray(vectors), self._matrix, top_k, normalized=numpy_norms is None, corpus_norms=numpy_norms
        )

    def _best_chunks(
        self, hits: list[list[dict[str, Any]]], vectors: Any, top_k: int, fetch: Any = None
    ) -> list[list[dict]]:
        """Of each query's chunk hits, the best chunk of each of the top_k best texts: chunk hits
        are fetched (by FETCH(vectors, k), exact search by default) in growing numbers until
        top_k texts are among them (or all chunks are)."""
        fetch = fetch or self._top_k
        documents = self._source_rows
        wanted = [self._first_texts(per_query, documents, top_k) for per_query in hits]
        wanted_hits = max(len(per_query) for per_query in hits)
        while any(len(w) < top_k for w in wanted) and wanted_hits < len(documents):
            wanted_hits = min(wanted_hits * 4, len(documents))
            more = fetch(vectors, wanted_hits)
            wanted = [self._first_texts(per_query, documents, top_k) for per_query in more]
        return wanted

    @staticmethod
    def _first_texts(per_query: list[dict[str, Any]], documents: np.ndarray, top_k: int) -> list[dict]:
        seen: set[int] = set()
        best = []
        for hit in per_query:  # best first
            document = int(documents[hit["corpus_id"]])
            if document not in seen:
                seen.add(document)
                best.append({"corpus_id": hit["corpus_id"], "score": hit["score"]})
                if len(best) == top_k:
                    break
        return best

    @cached_property
    def _source_rows(self) -> np.ndarray:
        return np.asarray(self.column("source_row").to_numpy(), dtype=np.int64)


def _embedding_columns(names: list[str], meta: dict[str, Any]) -> list[str]:
    column = meta.get("embedding_column") or config.EMBEDDING_COLUMN
    if column in names and meta.get("layout") != "blog":
        return [column]
    # The blog's shape: one numeric column per dimension, named "0".."d-1".
    digits = [c for c in names if c.isdigit()]
    if digits and sorted(int(c) for c in digits) == list(range(len(digits))):
        return sorted(digits, key=int)
    raise ColumnError(
        f"no embeddings found: expected an {column!r} column or columns named '0'..'d-1'; "
        f"columns: {', '.join(names)}"
    )


def load(
    repo_or_path: str,
    revision: str | None = None,
    *,
    split: str | None = None,
    token: str | None = None,
    model: str | None = None,
    device: str = "auto",
    trust_remote_code: bool = False,
) -> EmbeddedDataset:
    """Load an embedded dataset from a Hub repo id, a local folder, or a local csv/parquet file.

    Reads hubembed's own layout and the blog's (columns "0".."d-1"). ``model`` overrides the
    model used for text queries. Raises SourceError if it cannot be found.
    """
    token = token if token is not None else config.hf_token()
    path = Path(repo_or_path).expanduser()
    if path.exists():
        readme = path / "README.md"
        meta = read_metadata(readme.read_text(encoding="utf-8")) if readme.is_file() else {}
        ds, shards = _load_local(path, meta, split)
    else:
        repo_id = _hub.repo_id_of(repo_or_path)
        if repo_id is None:
            raise SourceError(f"no such folder or file: {repo_or_path} (and it is not a Hub dataset id)")
        # A bare name is a local folder as often as a canonical Hub dataset: say both.
        local = "" if "/" in repo_id else f"; there is no local folder or file {repo_or_path!r} either"
        try:
            sha, reachable = _resolve_revision(repo_id, revision, token)
            # The card is fetched at REVISION itself, not at SHA, so the HF cache records where
            # the branch pointed and a later offline load finds it; the rows are read at the
            # card's commit, so the two belong together. Once the Hub is known to be out of
            # reach, only the cache is asked: no retries.
            card, commit = _hub_readme(repo_id, revision, token, offline=not reachable)
            meta = read_metadata(card)
            ds, shards = _load_hub(repo_id, commit or sha, meta, split, token, offline=not reachable)
        except SourceError as exc:
            raise SourceError(f"{exc}{local}") from exc
        except HubUnreachableError as exc:
            raise HubUnreachableError(f"{exc}{local}") from exc
    return EmbeddedDataset(
        ds,
        meta,
        model=model,
        token=token,
        device=device,
        trust_remote_code=trust_remote_code,
        shards=shards,
        ref=repo_or_path,
    )


# What a load found: a datasets.Dataset, or hubembed's parquet shards (location, files) for
# EmbeddedDataset to read lazily.
Found = tuple["datasets.Dataset | None", "tuple[str, list[Path]] | None"]


def _split_of(meta: dict[str, Any], split: str | None) -> str:
    return split or (meta.get("source") or {}).get("split") or config.DEFAULT_SPLIT


def _pick(dd: Any, meta: dict[str, Any], split: str | None) -> datasets.Dataset:
    split = split or (meta.get("source") or {}).get("split")
    if split is None:
        split = config.DEFAULT_SPLIT if config.DEFAULT_SPLIT in dd or len(dd) != 1 else next(iter(dd))
    if split not in dd:
        raise SourceError(f"no split {split!r}; available: {', '.join(dd)}")
    return dd[split]


def _load_local(path: Path, meta: dict[str, Any], split: str | None) -> Found:
    """A hubembed folder's shards, or other local files read straight into Arrow.

    Not through load_dataset: its cache keys a local folder by file names and times, so a
    folder rebuilt in place can come back as the previous build.
    """
    if path.is_file():
        files = [path]
    else:
        split = _split_of(meta, split)
        shards = sorted(path.glob(f"data/{split}-*.parquet"))
        if shards:
            return None, (f"folder:{path.resolve()}:{split}", shards)
        files = sorted(p for p in path.rglob("*") if p.suffix in FILE_BUILDERS and ".cache" not in p.parts)
    if not files or any(p.suffix not in FILE_BUILDERS for p in files):
        raise SourceError(
            f"cannot read {path}: give a folder built by hubembed, or a csv, json or parquet file"
        )
    return _read_files(files), None


def _read_files(files: list[Path]) -> datasets.Dataset:
    import datasets
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        if f.suffix == ".parquet":
            tables.append(pq.read_table(f, memory_map=True))
        elif f.suffix == ".csv":
            tables.append(pcsv.read_csv(f))
        else:
            tables.append(pjson.read_json(f))
    # Dataset(table) restores datasets' features from the schema metadata the shards carry.
    # Its default fingerprint hashes the whole table; the files' identity is enough here.
    return datasets.Dataset(pa.concat_tables(tables), fingerprint=fingerprint(files))


def _resolve_revision(repo_id: str, revision: str | None, token: str | None) -> tuple[str | None, bool]:
    """The commit sha of REVISION; with no Hub in reach (offline), REVISION itself, for the cache."""
    from huggingface_hub import HfApi

    if config.offline():
        return revision, False
    try:
        return HfApi().dataset_info(repo_id, revision=revision, token=token).sha, True
    except Exception as exc:
        if _hub.is_connection_error(exc):
            log.warning(
                "cannot reach the Hub at %s: reading %s from the local cache", config.hf_endpoint(), repo_id
            )
            return revision, False
        mapped = _hub.source_error(exc, repo_id, revision, token)
        if mapped is None:
            raise
        raise mapped from exc


def _hub_readme(
    repo_id: str, revision: str | None, token: str | None, *, offline: bool = False
) -> tuple[str, str | None]:
    """The repo's card ("" if it has none) and the commit it was read at (None if unknown)."""
    import re

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        path = hf_hub_download(
            repo_id,
            "README.md",
            repo_type="dataset",
            revision=revision,
            token=token,
            local_files_only=offline,
        )
    except RemoteEntryNotFoundError:
        return "", None  # the repo has no card: the blog's shape
    except LocalEntryNotFoundError as exc:  # the Hub out of reach, and nothing cached
        raise HubUnreachableError(
            f"cannot reach the Hub at {config.hf_endpoint()} and {repo_id!r} is not in the local cache"
        ) from exc
    except Exception as exc:
        mapped = _hub.source_error(exc, repo_id, revision, token)
        if mapped is None:
            raise
        raise mapped from exc
    # The cache keeps each file under snapshots/<commit>/.
    commit = Path(path).parent.name
    return Path(path).read_text(encoding="utf-8"), commit if re.fullmatch("[0-9a-f]{40}", commit) else None


def _load_hub(
    repo_id: str,
    revision: str | None,
    meta: dict[str, Any],
    split: str | None,
    token: str | None,
    *,
    offline: bool = False,
) -> Found:
    """A hubembed repo's shards for the split, downloaded (or found in the HF cache) as files;
    any other repo through load_dataset."""
    import datasets
    from huggingface_hub import snapshot_download

    try:
        if meta and meta.get("layout") != "blog":
            split = _split_of(meta, split)
            folder = snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=revision,
                # The build's .npy of the vectors, which the first load maps as it is, and the
                # ANN index (--index): both come with the shards they cover.
                allow_patterns=[
                    f"data/{split}-*.parquet",
                    f"{PUBLISHED_FOLDER}/{split}.npy",
                    f"index/{split}.*",
                ],
                token=token,
                local_files_only=offline,
            )
            shards = sorted(Path(folder).glob(f"data/{split}-*.parquet"))
            if shards:
                return None, (f"hub:{config.hf_endpoint()}/{repo_id}:{split}", shards)
        loaded = datasets.load_dataset(repo_id, revision=revision, token=token)
    except Exception as exc:
        mapped = _hub.source_error(exc, repo_id, revision, token)
        if mapped is None:
            raise
        raise mapped from exc
    return _pick(loaded, meta, split), None
