"""Search queries embedded without torch: the model's cached ONNX export, run by onnxruntime,
tokenised by the Rust ``tokenizers`` package.

Importing sentence-transformers (torch, transformers) costs most of a search's start-up. A
search embeds a handful of queries, which onnxruntime does in milliseconds once the model is
exported. The first search of a model takes the slow path (sentence-transformers) and then
calls ``ensure_export``: it exports the model as the onnx backend does (hubembed/onnx_embedder.py,
same cache entry), and records next to it, under ``<cache>/onnx/query/``, what a query needs
without the model loaded: the tokenizer exactly as transformers runs it, the pooling, the
model's own normalisation, prompts, default truncation and sequence length, keyed by the
model's location and revision and checked against the model folder's files. It only records a
model whose vectors it reproduces: it compares a few probe texts with ``encode`` first.

``query_embedder`` is what the loader calls: the fast path when the model is recorded, else the
slow one, recording the model. ``fast_query_embedder`` (or ``cached_query_model``) is the fast
path alone: an Embedder giving ``SentenceTransformer.encode``'s vectors (cosine > 0.9999) for
the same EmbedSettings, or None (take the slow path) when nothing is recorded, the model folder
changed, the export is gone, onnxruntime or tokenizers is missing, or the settings are ones the
slow path must judge (an unknown prompt name, a truncate_dim out of range). ``search_numpy`` is
hubembed.semantic_search's top-k in numpy, for a search that has not needed torch otherwise.
See "Search start-up" in benchmarks/README.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .embedder import Embedder, EmbedSettings
from .onnx_embedder import pool_outputs

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from .models import ResolvedModel

log = logging.getLogger("hubembed")

# Bump when what is recorded, or how it is used, changes: older records are then ignored.
RECORD_FORMAT = 1
# Queries are sorted by token count and run at most ROWS_PER_RUN at a time, and at most
# TOKENS_PER_RUN tokens (rows x longest): a long query does not pad the short ones to its length.
ROWS_PER_RUN = 32
TOKENS_PER_RUN = 1024
# search_numpy: corpus rows scored at once, and at most this many scores (float32: 128 MiB) per
# group of queries.
_CHUNK_ROWS = 65_536
_SCORE_BUDGET = 1 << 25
# Probe texts compared with encode before a model is recorded; the last is past any sequence
# limit, so truncation is checked too.
_PROBES = ["How can Medicare help me?", "x", " ".join(["a longer probe sentence, with punctuation;"] * 200)]
_PROBE_MIN_COSINE = 0.99995


def _records() -> Path:
    return config.cache_dir() / "onnx" / "query"


def _where(location: str) -> str:
    """LOCATION as recorded: a local folder by its absolute path, a Hub id as given."""
    path = Path(location)
    return str(path.resolve()) if path.is_dir() else location


def _stem(location: str, revision: str | None) -> str:
    return hashlib.sha256(json.dumps([_where(location), revision]).encode()).hexdigest()[:24]


def _model_folder(location: str, revision: str | None) -> Path | None:
    """The folder the model is read from: LOCATION itself, or its snapshot in the HF cache."""
    path = Path(location)
    if path.is_dir():
        return path.resolve()
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(location, "config.json", revision=revision)
    except Exception as exc:  # an id the cache cannot even look up: no fast path
        log.debug("no cached folder for %s: %s", location, exc)
        return None
    return Path(found).parent if isinstance(found, str) else None


def _fingerprint(folder: Path) -> str | None:
    """A key that changes when a file the model is made of changes: the folder's own files and
    those of the module folders named in its modules.json (path, size, modification time)."""
    try:
        files = [p for p in folder.iterdir() if p.is_file()]
        modules = folder / "modules.json"
        if modules.is_file():
            for module in json.loads(modules.read_text(encoding="utf-8")):
                sub = module.get("path") if isinstance(module, dict) else None
                if sub and (folder / sub).is_dir():
                    files += [p for p in (folder / sub).rglob("*") if p.is_file()]
        parts = sorted(
            f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}" for p in files for st in [p.stat()]
        )
    except (OSError, ValueError, TypeError) as exc:
        log.debug("cannot fingerprint %s: %s", folder, exc)
        return None
    return hashlib.sha256("\0".join([str(folder), *parts]).encode()).hexdigest()[:24]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class QueryModel:
    """A recorded model: its prompts, and ``embedder(settings)`` to embed queries with it."""

    def __init__(self, record: dict[str, Any], onnx_path: Path, tokenizer_path: Path) -> None:
        self.record = record
        self.onnx_path = onnx_path
        self.tokenizer_path = tokenizer_path
        self.prompts: dict[str, str | None] = dict(record["prompts"])
        #: the full vector length, before any truncate_dim
        self.dimension: int = int(record["dimension"])

    def embedder(self, settings: EmbedSettings) -> QueryEmbedder | None:
        """A QueryEmbedder for SETTINGS; None for settings the slow path must refuse (an unknown
        prompt name, a truncate_dim out of range) or files that cannot be read."""
        if settings.prompt_name is not None and settings.prompt_name not in self.prompts:
            return None
        if settings.truncate_dim is not None and not 0 < settings.truncate_dim <= self.dimension:
            return None
        try:
            return QueryEmbedder(self, settings)
        except Exception as exc:  # a damaged export or tokenizer file: the slow path rewrites them
            log.debug("cannot open the cached query model %s: %s", self.onnx_path, exc)
            return None


class QueryEmbedder(Embedder):
    """``SentenceTransformer.encode``'s vectors for a recorded model, computed by onnxruntime on
    one CPU thread (a query takes milliseconds; more threads only wait for busy cores).

    Like encode: the prompt is prepended to each text (its tokens left out of the pooling where
    the model's Pooling says so), the model's own Normalize runs before truncate_dim, then
    ``normalize``.
    """

    def __init__(self, model: QueryModel, settings: EmbedSettings) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        record = model.record
        self.settings = settings
        self.pooling: str = record["pooling"]
        self.model_normalizes: bool = bool(record["normalizes"])
        self.input_names: list[str] = list(record["inputs"])
        self.pad_id: int = int(record["pad_id"])
        self.pad_type_id: int = int(record["pad_type_id"])
        self.left_padded = record["padding_side"] == "left"
        self.truncate_dim: int | None = settings.truncate_dim or record["truncate_dim"]
        self.width = int(self.truncate_dim or model.dimension)
        self.dimension = self.width
        self.tokenizer = Tokenizer.from_file(str(model.tokenizer_path))
        # What transformers sets for a call with truncation="longest_first" and no padding.
        self.tokenizer.enable_truncation(
            int(settings.seq_length or record["max_length"]),
            stride=0,
            strategy="longest_first",
            direction=record["truncation_side"],
        )
        self.tokenizer.no_padding()
        self.prompt: str | None = settings.prompt
        if self.prompt is None:
            name = settings.prompt_name or record["default_prompt_name"]
            self.prompt = model.prompts.get(name) if name else None
        self.prompt_length = 0
        if self.prompt and not record["include_prompt"]:
            ids = self.tokenizer.encode(self.prompt).ids
            self.prompt_length = len(ids) - (ids[-1] in set(record["special_ids"]))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model.onnx_path), options, providers=["CPUExecutionProvider"])

    def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        out = np.empty((len(texts), self.width), dtype=np.float32)
        if not texts:
            return out
        if self.prompt:
            texts = [self.prompt + t for t in texts]
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        start = 0
        while start < len(order):
            longest = len(encodings[order[start]].ids)
            rows = order[start : start + max(1, min(ROWS_PER_RUN, TOKENS_PER_RUN // longest))]
            out[rows] = self._run([encodings[i] for i in rows])
            start += len(rows)
        return out

    def _run(self, encodings: list[Any]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        n = len(encodings)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.full((n, width), self.pad_type_id, dtype=np.int64)
        for r, e in enumerate(encodings):
            span = slice(width - len(e.ids), width) if self.left_padded else slice(0, len(e.ids))
            ids[r, span] = e.ids
            mask[r, span] = 1
            types[r, span] = e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = self.session.run(None, {name: feed[name] for name in self.input_names})[0]
        return pool_outputs(
            hidden,
            mask,
            prompt_length=self.prompt_length,
            pooling=self.pooling,
            model_normalizes=self.model_normalizes,
            truncate_dim=self.truncate_dim,
            normalize=self.settings.normalize,
        )


def _current_record(stem: str, location: str, revision: str | None) -> dict[str, Any] | None:
    """The record under STEM, if it is of this format and its model folder has not changed since."""
    try:
        record = json.loads((_records() / f"{stem}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    folder = _model_folder(location, revision)
    if folder is None or _fingerprint(folder) != record.get("fingerprint"):
        log.debug("the query record of %s does not match its folder: taking the slow path", location)
        return None
    return record


def cached_query_model(
    location: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> QueryModel | None:
    """The recorded model at LOCATION (a folder, or a Hub id at REVISION), or None.

    None when ``ensure_export`` never recorded it, its folder's files changed since, its export
    or tokenizer file is gone, onnxruntime or tokenizers is not installed, or it was recorded
    from a model loaded with trust_remote_code and TRUST_REMOTE_CODE is False (the slow path
    then asks for it, as it always did). Imports neither torch nor transformers.
    """
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return None
    stem = _stem(location, revision)
    record = _current_record(stem, location, revision)
    if record is None or record.get("refused"):
        return None
    if record.get("trust_remote_code") and not trust_remote_code:
        return None
    onnx_path = config.cache_dir() / "onnx" / str(record["export"]) / "model.onnx"
    tokenizer_path = _records() / f"{stem}.tokenizer.json"
    if not (onnx_path.is_file() and tokenizer_path.is_file()):
        return None
    return QueryModel(record, onnx_path, tokenizer_path)


def fast_query_embedder(
    location: str,
    settings: EmbedSettings,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> QueryEmbedder | None:
    """An embedder for queries with the recorded model at LOCATION and SETTINGS, or None (take the
    slow path): ``cached_query_model(...).embedder(settings)``."""
    model = cached_query_model(location, revision=revision, trust_remote_code=trust_remote_code)
    return model.embedder(settings) if model is not None else None


def query_embedder(
    resolved: ResolvedModel,
    settings: EmbedSettings,
    *,
    documents: EmbedSettings | None = None,
    device: str = "auto",
    token: str | None = None,
    trust_remote_code: bool = False,
) -> Embedder:
    """The embedder for search queries with RESOLVED and SETTINGS: the recorded ONNX export when
    there is one (no torch), else sentence-transformers, recording the model for the next search.

    DOCUMENTS, the build's settings, stands for SETTINGS when the card names no query prompt:
    the query side is then derived from the model's prompts (``query_settings``). The fast path
    runs on the CPU, so it is taken for DEVICE "auto" or "cpu" only; other devices load the
    model as before, and export nothing. Raises ModelError as ``load_model`` and LocalEmbedder do.
    """
    from .embedder import LocalEmbedder, query_settings

    on_cpu = device in ("auto", "cpu")
    if on_cpu:
        cached = cached_query_model(
            resolved.location, revision=resolved.revision, trust_remote_code=trust_remote_code
        )
        if cached is not None:
            fast = cached.embedder(
                query_settings(documents, cached.prompts) if documents is not None else settings
            )
            if fast is not None:
                log.debug("embedding queries with the ONNX export of %s", resolved.model_id)
                return fast
    from .models import load_model

    model = load_model(resolved, device=device, token=token, trust_remote_code=trust_remote_code)
    if documents is not None:
        settings = query_settings(documents, model.prompts or {})
    embedder = LocalEmbedder(model, settings)
    if on_cpu:
        ensure_export(
            model, resolved.location, revision=resolved.revision, trust_remote_code=trust_remote_code
        )
    return embedder


def ensure_export(
    model: SentenceTransformer,
    location: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> bool:
    """Export MODEL, loaded from LOCATION at REVISION, and record it for ``fast_query_embedder``.

    Call it after loading the model on the slow path. The export is the onnx backend's (one
    cache entry for both); the first call takes seconds, later ones return at once while the
    record holds. Returns whether the model is recorded. Never raises for a model it cannot
    reproduce, a missing onnx/onnxruntime, or a cache it cannot write: the search goes on and
    the next one takes the slow path again.
    """
    if cached_query_model(location, revision=revision, trust_remote_code=trust_remote_code) is not None:
        return True
    known = _current_record(_stem(location, revision), location, revision)
    if known is not None and known.get("refused"):
        return False  # this model's export was found not to reproduce encode: not again
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes the model with it)
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    from .errors import ModelError
    from .onnx_embedder import _cache_key, _check_stack, _export, _input_names

    try:
        transformer, pooling_mode, pooling, normalizes = _check_stack(model)
    except ModelError as exc:
        log.debug("queries of %s keep the slow path: %s", location, exc)
        return False
    folder = _model_folder(location, revision)
    fingerprint = _fingerprint(folder) if folder is not None else None
    if fingerprint is None:
        return False
    try:
        inputs = _input_names(transformer)
        key = _cache_key(transformer, inputs)
        onnx_path = config.cache_dir() / "onnx" / key / "model.onnx"
        if not onnx_path.exists():
            log.info("exporting %s to ONNX (once) for fast searches, at %s", location, onnx_path)
            _export(transformer, inputs, onnx_path)
        tokenizer = transformer.tokenizer
        limits = [transformer.max_seq_length, getattr(transformer.config, "max_position_embeddings", None)]
        record = {
            "format": RECORD_FORMAT,
            "location": _where(location),
            "revision": revision,
            "fingerprint": fingerprint,
            "trust_remote_code": trust_remote_code,
            "export": key,
            "inputs": inputs,
            "pooling": pooling_mode,
            "include_prompt": bool(pooling.include_prompt),
            "normalizes": normalizes,
            "dimension": int(model.get_embedding_dimension() or 0),
            "max_length": min(int(n) for n in limits if n),
            "truncate_dim": model.truncate_dim,
            "prompts": dict(model.prompts or {}),
            "default_prompt_name": model.default_prompt_name,
            "pad_id": tokenizer.pad_token_id or 0,
            "pad_type_id": tokenizer.pad_token_type_id or 0,
            "padding_side": tokenizer.padding_side,
            "truncation_side": tokenizer.truncation_side,
            "special_ids": [int(i) for i in tokenizer.all_special_ids],
        }
        stem = _stem(location, revision)
        folder_out = _records()
        folder_out.mkdir(parents=True, exist_ok=True)
        tokenizer_path = folder_out / f"{stem}.tokenizer.json"
        # The tokenizer as transformers runs it (sentence-transformers' do_lower_case included).
        _write(tokenizer_path, tokenizer.backend_tokenizer.to_str())
        recorded = QueryModel(record, onnx_path, tokenizer_path)
        if not _reproduces(recorded, model):
            log.info("queries of %s keep the slow path: the ONNX export does not reproduce encode", location)
            refused = {k: record[k] for k in ("format", "location", "revision", "fingerprint")}
            _write(folder_out / f"{stem}.json", json.dumps({**refused, "refused": True}, indent=1))
            return False
        _write(folder_out / f"{stem}.json", json.dumps(record, indent=1))
    except Exception as exc:  # a full disk, a model the tracer cannot export: searches still work
        log.info("cannot cache %s for fast searches (%s): searches keep loading the model", location, exc)
        return False
    return True


def _reproduces(recorded: QueryModel, model: SentenceTransformer) -> bool:
    """Whether the recorded model gives encode's vectors for the probe texts (no normalising, so
    lengths are compared too; a prompt, if the model names a default one)."""
    fast = recorded.embedder(EmbedSettings(normalize=False))
    if fast is None:
        return False
    got = fast.embed_batch(_PROBES)
    expected = np.asarray(
        model.encode(_PROBES, convert_to_numpy=True, show_progress_bar=False), dtype=np.float32
    )
    if got.shape != expected.shape:
        return False
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    cosine = (got * expected).sum(axis=1) / np.maximum(norms, 1e-12)
    lengths = np.linalg.norm(got, axis=1) / np.maximum(np.linalg.norm(expected, axis=1), 1e-12)
    return bool(cosine.min() >= _PROBE_MIN_COSINE and np.abs(lengths - 1).max() <= 1e-3)


def search_numpy(
    query_embeddings: Any,
    corpus_embeddings: np.ndarray,
    top_k: int = 10,
    *,
    normalized: bool = False,
    corpus_norms: np.ndarray | None = None,
) -> list[list[dict[str, Any]]]:
    """``hubembed.semantic_search``'s cosine top-k in numpy, for a search that need not import
    torch (about 1.2 s of a search's start-up): same answer shape, same scores (float32).

    QUERY_EMBEDDINGS: q x d (or one vector); CORPUS_EMBEDDINGS: an N x d array (a memory-mapped
    one is read a chunk at a time). ``normalized`` and ``corpus_norms`` as for semantic_search.
    """
    queries = np.asarray(query_embeddings)
    if queries.ndim == 1:
        queries = queries[None, :]
    corpus = corpus_embeddings
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"query_embeddings of shape {queries.shape} do not fit corpus_embeddings of shape {corpus.shape}"
        )
    if int(top_k) < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k!r}")
    n = corpus.shape[0]
    dtype: Any = np.float64 if corpus.dtype == np.float64 else np.float32
    q: np.ndarray[Any, Any] = queries.astype(dtype)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    k = min(int(top_k), n)
    if k == 0 or not len(q):
        return [[] for _ in range(len(q))]
    chunk = min(n, _CHUNK_ROWS)
    group = max(1, _SCORE_BUDGET // chunk)
    values = np.empty((len(q), k), dtype=dtype)
    ids = np.empty((len(q), k), dtype=np.int64)
    for a in range(0, len(q), group):
        best_v: np.ndarray | None = None
        best_i: np.ndarray | None = None
        for start in range(0, n, chunk):
            rows: np.ndarray[Any, Any] = np.asarray(corpus[start : start + chunk], dtype=dtype)
            scores: np.ndarray[Any, Any] = q[a : a + group] @ rows.T
            if not normalized:
                norms = corpus_norms[start : start + chunk] if corpus_norms is not None else None
                if norms is None:
                    norms = np.linalg.norm(rows, axis=1)
                scores /= np.maximum(np.asarray(norms, dtype=dtype), 1e-12)
            top = min(k, scores.shape[1])
            picked = np.argpartition(-scores, top - 1, axis=1)[:, :top]
            v, i = np.take_along_axis(scores, picked, axis=1), picked + start
            if best_v is not None and best_i is not None:
                v, i = np.concatenate([best_v, v], axis=1), np.concatenate([best_i, i], axis=1)
                if v.shape[1] > k:
                    keep = np.argpartition(-v, k - 1, axis=1)[:, :k]
                    v, i = np.take_along_axis(v, keep, axis=1), np.take_along_axis(i, keep, axis=1)
            best_v, best_i = v, i
        assert best_v is not None and best_i is not None
        order = np.argsort(-best_v, axis=1, kind="stable")
        values[a : a + group] = np.take_along_axis(best_v, order, axis=1)
        ids[a : a + group] = np.take_along_axis(best_i, order, axis=1)
    return [
        [{"corpus_id": i, "score": v} for i, v in zip(row_ids, row_values, strict=True)]
        for row_ids, row_values in zip(ids.tolist(), values.tolist(), strict=True)
    ]
