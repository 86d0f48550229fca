"""Load an embedded dataset (ours, or the blog's bare embeddings.csv) and search it."""

from __future__ import annotations

import hashlib
import logging
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _hub, config
from .card import read_metadata
from .embedder import EmbedSettings, LocalEmbedder, query_settings
from .errors import ColumnError, HubUnreachableError, SourceError
from .search import semantic_search
from .source import FILE_BUILDERS

if TYPE_CHECKING:
    import datasets
    import torch

log = logging.getLogger("hubembed")


class EmbeddedDataset:
    """An embedded dataset: rows, their vectors, and how they were made.

    ``dataset`` is a datasets.Dataset; ``embeddings`` an N x d float32 tensor; ``metadata``
    what the card records ({} for a dataset without a hubembed card).
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        metadata: dict[str, Any],
        *,
        model: str | None = None,
        token: str | None = None,
        device: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        self.dataset = dataset
        self.metadata = metadata
        self._model = model
        self._token = token
        self._device = device
        self._trust_remote_code = trust_remote_code
        self.embedding_columns = _embedding_columns(dataset, metadata)

    @property
    def text_column(self) -> str | None:
        column = (self.metadata.get("source") or {}).get("column")
        return column if column in self.dataset.column_names else None

    @cached_property
    def embeddings(self) -> torch.Tensor:
        """The vectors as one N x d float32 tensor.

        One in-memory chunk of float32 vectors (a dataset of one parquet shard) is shared with
        the dataset's Arrow column, not copied: treat the tensor as read-only (``.clone()``
        before editing it in place). Anything else is copied chunk by chunk.
        """
        import torch

        return torch.from_numpy(_matrix(self._table, self.embedding_columns))

    @property
    def _table(self) -> Any:
        """The rows as one pyarrow Table, in the dataset's order (an indices mapping applied)."""
        if self.dataset._indices is not None:
            return self.dataset.with_format("arrow")[:]
        return self.dataset.data.table

    @cached_property
    def _corpus_norms(self) -> torch.Tensor | None:
        """The row norms of ``embeddings``, computed once; None when all are 1 (to 1e-6).

        Checked rather than read from the card, whose ``normalized`` allows 1e-3.
        """
        from .search import row_norms

        norms = row_norms(self.embeddings)
        return None if bool(((norms - 1).abs() <= 1e-6).all()) else norms

    @cached_property
    def _embedder(self) -> LocalEmbedder:
        from .models import load_model, resolve_model

        meta = self.metadata
        model_id = self._model or meta.get("model")
        if model_id is None:
            model_id = config.DEFAULT_MODEL
            log.warning("no hubembed card records the model: embedding queries with %s", model_id)
        revision = meta.get("model_revision") if not self._model else None
        resolved = resolve_model(model_id, revision=revision, token=self._token)
        model = load_model(
            resolved, device=self._device, token=self._token, trust_remote_code=self._trust_remote_code
        )
        settings = EmbedSettings(
            prompt_name=meta.get("query_prompt_name"),
            prompt=meta.get("query_prompt"),
            truncate_dim=meta.get("truncate_dim"),
            normalize=bool(meta.get("normalize", True)),
        )
        if settings.prompt_name is None and settings.prompt is None:
            # A remote build could not see the model's prompts: derive the query side here.
            documents = EmbedSettings(
                meta.get("prompt_name"), meta.get("prompt"), settings.truncate_dim, settings.normalize
            )
            settings = query_settings(documents, model.prompts or {})
        return LocalEmbedder(model, settings)

    def embed_queries(self, queries: list[str]) -> torch.Tensor:
        """Embed search queries with the model, query prompt and settings the card records."""
        import torch

        return torch.from_numpy(self._embedder.embed_batch(queries))

    def search(self, query: Any, top_k: int = 10) -> Any:
        """Top-k rows for QUERY: a string, a list of strings, or a tensor/array of vectors.

        A single query (a string or one vector) gives a list of hits; several give a list per
        query. Each hit is ``{"corpus_id", "score", "row"}``, best first.
        """
        import torch

        single = isinstance(query, str) or (not isinstance(query, list) and np.ndim(query) == 1)
        if isinstance(query, str):
            query = [query]
        if isinstance(query, list) and all(isinstance(q, str) for q in query):
            vectors: Any = self.embed_queries(query)
        else:
            vectors = torch.as_tensor(np.asarray(query) if isinstance(query, list) else query)
        norms = self._corpus_norms
        hits = semantic_search(vectors, self.embeddings, top_k, normalized=norms is None, corpus_norms=norms)
        # A hit's row holds the user's columns: not the vector, nor our bookkeeping hash.
        hidden = [*self.embedding_columns, self.metadata.get("hash_column")]
        shown = [c for c in self.dataset.column_names if c not in hidden]
        if self.metadata.get("layout") == "blog" or not shown:
            shown = []
        # One Arrow take for all hits, instead of a row lookup per hit.
        ids = [hit["corpus_id"] for per_query in hits for hit in per_query]
        picked = self._table.select(shown).take(ids).to_pylist() if shown and ids else [{}] * len(ids)
        found = iter(picked)
        for per_query in hits:
            for hit in per_query:
                hit["row"] = next(found)
        return hits[0] if single else hits


def _embedding_columns(ds: datasets.Dataset, meta: dict[str, Any]) -> list[str]:
    column = meta.get("embedding_column") or config.EMBEDDING_COLUMN
    if column in ds.column_names and meta.get("layout") != "blog":
        return [column]
    # The blog's shape: one numeric column per dimension, named "0".."d-1".
    digits = [c for c in ds.column_names if c.isdigit()]
    if digits and sorted(int(c) for c in digits) == list(range(len(digits))):
        return sorted(digits, key=int)
    raise ColumnError(
        f"no embeddings found: expected an {column!r} column or columns named '0'..'d-1'; "
        f"columns: {', '.join(ds.column_names)}"
    )


def _matrix(table: Any, columns: list[str]) -> np.ndarray:
    """The vectors in COLUMNS of TABLE (one list column, or one column per dimension): n x d float32.

    One chunk of float32 vectors in writable memory comes back as a view of Arrow's buffer,
    not a copy. A memory-mapped file's buffers are read-only: those, several chunks, and other
    number types are copied, a chunk at a time. Raises ColumnError for rows that are not vectors
    of one length.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    if len(columns) > 1:
        out = np.empty((n, len(columns)), dtype=np.float32)
        for j, name in enumerate(columns):
            out[:, j] = table.column(name).to_numpy()
        return out
    name = columns[0]
    column = table.column(name)
    chunks = [c for c in column.chunks if len(c)]
    fixed = pa.types.is_fixed_size_list(column.type)
    if fixed:
        d = column.type.list_size
    elif chunks and (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        d = pc.list_value_length(chunks[0][:1])[0].as_py() or 0
    elif chunks:
        raise ColumnError(f"column {name!r} holds {column.type}, not vectors of numbers")
    else:
        d = 0

    def vectors(chunk: Any) -> np.ndarray:
        if chunk.null_count:
            raise ColumnError(f"column {name!r} has {chunk.null_count} rows without a vector")
        if not fixed:
            lengths = pc.min_max(pc.list_value_length(chunk))
            if (lengths["min"].as_py(), lengths["max"].as_py()) != (d, d):
                raise ColumnError(f"column {name!r} holds vectors of different lengths")
        values = chunk.flatten()
        if values.null_count or not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
            raise ColumnError(f"column {name!r} must hold vectors of numbers, with none missing")
        dtype = np.dtype(values.type.to_pandas_dtype())
        # frombuffer is writable exactly where Arrow's buffer is mutable (not a read-only mmap).
        flat = np.frombuffer(
            values.buffers()[1], dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize
        )
        return flat.reshape(len(chunk), d)

    if len(chunks) == 1:
        view = vectors(chunks[0])
        if view.dtype == np.float32 and view.flags.writeable:
            return view
    out = np.empty((n, d), dtype=np.float32)
    offset = 0
    for chunk in chunks:
        out[offset : offset + len(chunk)] = vectors(chunk)
        offset += len(chunk)
    return out


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
    path = Path(repo_or_path)
    if path.exists():
        readme = path / "README.md"
        meta = read_metadata(readme.read_text(encoding="utf-8")) if readme.is_file() else {}
        ds = _load_local(path, meta, split)
    else:
        repo_id = _hub.strip_hf_prefix(repo_or_path)
        # Pin one commit, so the card and the rows we read belong together.
        sha = _resolve_revision(repo_id, revision, token)
        meta = read_metadata(_hub_readme(repo_id, sha, token))
        ds = _load_hub(repo_id, sha, meta, split, token)
    return EmbeddedDataset(
        ds, meta, model=model, token=token, device=device, trust_remote_code=trust_remote_code
    )


def _pick(dd: Any, meta: dict[str, Any], split: str | None) -> datasets.Dataset:
    split = split or (meta.get("source") or {}).get("split")
    if split is None:
        split = config.DEFAULT_SPLIT if config.DEFAULT_SPLIT in dd or len(dd) != 1 else next(iter(dd))
    if split not in dd:
        raise SourceError(f"no split {split!r}; available: {', '.join(dd)}")
    return dd[split]


def _load_local(path: Path, meta: dict[str, Any], split: str | None) -> datasets.Dataset:
    """Read local files straight into Arrow, memory-mapped where possible.

    Not through load_dataset: its cache keys a local folder by file names and times, so a
    folder rebuilt in place can come back as the previous build.
    """
    if path.is_file():
        files = [path]
    else:
        split = split or (meta.get("source") or {}).get("split") or config.DEFAULT_SPLIT
        shards = sorted(path.glob(f"data/{split}-*.parquet"))
        files = shards or sorted(
            p for p in path.rglob("*") if p.suffix in FILE_BUILDERS and ".cache" not in p.parts
        )
    if not files or any(p.suffix not in FILE_BUILDERS for p in files):
        raise SourceError(
            f"cannot read {path}: give a folder built by hubembed, or a csv, json or parquet file"
        )
    return _read_files(files)


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
    identity = "\0".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return datasets.Dataset(pa.concat_tables(tables), fingerprint=fingerprint)


def _resolve_revision(repo_id: str, revision: str | None, token: str | None) -> str | None:
    """The commit sha of REVISION; with no Hub in reach (offline), REVISION itself, for the cache."""
    from huggingface_hub import HfApi

    if config.offline():
        return revision
    try:
        return HfApi().dataset_info(repo_id, revision=revision, token=token).sha
    except Exception as exc:
        if _hub.is_connection_error(exc):
            log.warning(
                "cannot reach the Hub at %s: reading %s from the local cache", config.hf_endpoint(), repo_id
            )
            return revision
        mapped = _hub.source_error(exc, repo_id, revision, token)
        if mapped is None:
            raise
        raise mapped from exc


def _hub_readme(repo_id: str, revision: str | None, token: str | None) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        path = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision, token=token)
    except RemoteEntryNotFoundError:
        return ""  # the repo has no card: the blog's shape
    except LocalEntryNotFoundError as exc:  # the Hub out of reach, and nothing cached
        raise HubUnreachableError(
            f"cannot reach the Hub at {config.hf_endpoint()} and {repo_id!r} is not in the local cache"
        ) from exc
    except Exception as exc:
        mapped = _hub.source_error(exc, repo_id, revision, token)
        if mapped is None:
            raise
        raise mapped from exc
    return Path(path).read_text(encoding="utf-8")


def _load_hub(
    repo_id: str, revision: str | None, meta: dict[str, Any], split: str | None, token: str | None
) -> datasets.Dataset:
    import datasets

    try:
        loaded = datasets.load_dataset(repo_id, revision=revision, token=token)
    except Exception as exc:
        mapped = _hub.source_error(exc, repo_id, revision, token)
        if mapped is None:
            raise
        raise mapped from exc
    return _pick(loaded, meta, split)
