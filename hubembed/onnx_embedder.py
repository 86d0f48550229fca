"""ONNX Runtime backend for CPU: the model's transformer exported once with torch.onnx, run by
onnxruntime, pooled and normalised in numpy.

The vectors of sentence-transformers' fp32 encode (cosine > 0.9999), faster on CPU: see
"Embedding (CPU)" in benchmarks/README.md. Only Transformer + Pooling(mean|cls) [+ Normalize]
models are supported; anything else keeps the torch backend.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .embedder import Embedder, EmbedSettings, LocalEmbedder
from .errors import ModelError, UsageError
from .vectors import unit_rows

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("hubembed")

# Bump when the exported graph changes, so old cache entries are not reused.
EXPORT_FORMAT = 1
OPSET = 17
# Texts are sorted by token count and cut into sub-batches of at most TOKEN_BUDGET tokens
# (rows x longest) and MAX_ROWS rows: little padding, and matrices that stay in a core's cache.
# Each sub-batch runs on one core, several at once (see OnnxEmbedder): measured faster than
# one sub-batch split across the cores (benchmarks/README.md, "Embedding (CPU)").
TOKEN_BUDGET = 512
MAX_ROWS = 16


def _unsupported(why: str) -> ModelError:
    return ModelError(
        f"the onnx backend cannot run this model: {why}; use the torch backend (--backend torch)"
    )


def _check_stack(model: SentenceTransformer) -> tuple[Any, str, Any, bool]:
    """(Transformer, pooling mode, Pooling, has Normalize) of a supported model, else ModelError."""
    modules = list(model)
    names = [type(m).__name__ for m in modules]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise _unsupported(f"its modules are {' -> '.join(names)}, not Transformer -> Pooling [-> Normalize]")
    transformer, pooling = modules[0], modules[1]
    mode = pooling.pooling_mode
    mode = mode[0] if isinstance(mode, (tuple, list)) and len(mode) == 1 else mode
    if mode not in ("mean", "cls"):
        raise _unsupported(f"pooling {mode!r} (only 'mean' and 'cls' are supported)")
    text = getattr(transformer, "modality_config", {}).get("text", {})
    if getattr(transformer, "backend", "torch") != "torch" or text.get("method", "forward") != "forward":
        raise _unsupported("its transformer is not a plain torch text encoder")
    tokenizer = transformer.tokenizer
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise _unsupported("it has no fast (Rust) tokenizer")
    return transformer, str(mode), pooling, len(modules) == 3


@dataclass
class TextPlan:
    """What a backend running the transformer itself does around it, as sentence-transformers
    would: the prompt, the truncation, the pooling and the normalisations. Shared by the onnx
    backend and the fast torch path (hubembed/fast_torch.py)."""

    transformer: Any
    tokenizer: Any
    input_names: list[str]
    pooling: str  # "mean" or "cls"
    model_normalizes: bool  # the model ends with a Normalize module
    width: int  # the vector length after truncate_dim
    max_length: int  # tokens read per text
    truncate_dim: int | None
    prompt: str | None
    prompt_length: int  # the prompt's tokens, left out of the pooling (0: pooled, or no prompt)


def text_plan(model: SentenceTransformer, settings: EmbedSettings) -> TextPlan:
    """MODEL's plan for SETTINGS. Raises ModelError for a model only the torch backend runs, an
    unknown prompt name or a bad truncate_dim."""
    transformer, mode, pooling, normalizes = _check_stack(model)
    checked = LocalEmbedder(model, settings)  # refuses an unknown prompt_name or a bad truncate_dim
    tokenizer = transformer.tokenizer
    limits = [transformer.max_seq_length, getattr(transformer.config, "max_position_embeddings", None)]
    max_length = min(int(n) for n in limits if n)
    if settings.seq_length is not None:  # checked against the position limit before the build
        max_length = settings.seq_length
    prompt = settings.prompt
    if prompt is None:
        name = settings.prompt_name or model.default_prompt_name
        prompt = (model.prompts or {}).get(name) if name else None
    prompt_length = 0
    if prompt and not pooling.include_prompt:
        ids = tokenizer([prompt])["input_ids"][0]
        prompt_length = len(ids) - (ids[-1] in tokenizer.all_special_ids)
    return TextPlan(
        transformer,
        tokenizer,
        _input_names(transformer),
        mode,
        normalizes,
        checked.dimension or 0,
        max_length,
        settings.truncate_dim or model.truncate_dim,
        prompt,
        prompt_length,
    )


def _input_names(transformer: Any) -> list[str]:
    import inspect

    accepted = inspect.signature(transformer.auto_model.forward).parameters
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]


def _cache_key(transformer: Any, inputs: list[str]) -> str:
    import torch
    import transformers

    hf = transformer.auto_model
    weights = hashlib.sha256()
    for name, tensor in hf.state_dict().items():
        weights.update(name.encode())
        weights.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    key = {
        "path": str(hf.config._name_or_path),
        "revision": getattr(hf.config, "_commit_hash", None),
        "weights": weights.hexdigest(),
        "inputs": inputs,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": _version("onnx"),
        "opset": OPSET,
        "format": EXPORT_FORMAT,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _export(transformer: Any, inputs: list[str], path: Path) -> None:
    """Export the transformer (input ids -> last_hidden_state) to PATH, atomically."""
    import torch

    # A private fp32 CPU copy with eager attention: the user's model is left as it was, and
    # the traced graph keeps the padding mask (SDPA's fast paths specialise on the example).
    hf = copy.deepcopy(transformer.auto_model).to("cpu", torch.float32).eval()
    hf.set_attn_implementation("eager")

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(inputs, tensors, strict=True))).last_hidden_state

    example = transformer.tokenizer(
        ["an example", "a longer example sentence"], padding=True, return_tensors="pt"
    )
    dims = {0: "batch", 1: "sequence"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings the user cannot act on
            torch.onnx.export(
                LastHidden().eval(),
                tuple(example[n] for n in inputs),
                str(tmp),
                input_names=inputs,
                output_names=["last_hidden_state"],
                dynamic_axes={n: dims for n in [*inputs, "last_hidden_state"]},
                opset_version=OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class OnnxEmbedder(Embedder):
    """A sentence-transformers model's vectors, computed by onnxruntime on the CPU.

    Honours EmbedSettings like LocalEmbedder: the prompt is prepended to each text, the
    model's own Normalize runs before Matryoshka truncation, then ``normalize`` applies.

    Parallel over sub-batches, not inside them: the session runs on one thread and THREADS
    sub-batches run at once (onnxruntime releases the GIL). Splitting each small matrix
    product across cores costs a hand-off at every operator, and the whole run stalls
    whenever another process holds one of its cores.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        settings: EmbedSettings,
        *,
        threads: int | None = None,
        precision: str = "fp32",
        batch_size: int = 32,
    ):
        # Each call is split into sub-batches, one per core, and a core idles at the end of a
        # call: calls of 32 passes keep both busy (benchmarks/README.md, "Embedding (CPU)").
        self.texts_per_call = batch_size * 32
        try:
            import onnx  # noqa: F401  (torch.onnx.export writes the model with it)
            import onnxruntime as ort
        except ImportError as exc:
            raise UsageError(
                f"the onnx backend needs onnxruntime and onnx ({exc.name} is missing): "
                "pip install 'hubembed[onnx]'"
            ) from exc
        if precision not in ("fp32", "int8"):
            raise UsageError(f"unknown precision {precision!r}; use fp32 or int8")
        plan = text_plan(model, settings)
        transformer = plan.transformer
        self.settings = settings
        self.pooling, self._model_normalizes = plan.pooling, plan.model_normalizes
        self.width: int = plan.width
        self.dimension = self.width
        self.tokenizer = plan.tokenizer
        self.input_names = plan.input_names
        self.max_length = plan.max_length
        self.truncate_dim = plan.truncate_dim
        self.prompt = plan.prompt
        self.prompt_length = plan.prompt_length

        self.path = config.cache_dir() / "onnx" / _cache_key(transformer, self.input_names) / "model.onnx"
        self.exported = not self.path.exists()
        if self.exported:
            log.info("exporting %s to ONNX (once) at %s", transformer.config._name_or_path, self.path)
            _export(transformer, self.input_names, self.path)
        # Texts of at most this many tokens run in fp32 (int8's rounding does not average out
        # over so few tokens); 0: none.
        self.fp32_up_to = 0
        fp32 = self.path
        if precision == "int8":
            from .onnx_int8 import FP32_UP_TO_TOKENS, int8_path, quantize

            self.fp32_up_to = FP32_UP_TO_TOKENS
            self.path = int8_path(fp32)
            if not self.path.exists():
                log.info("quantising the ONNX export to int8 (once) at %s", self.path)
                lowest = quantize(model, fp32, self.path, self.input_names)
                log.info("int8 export: lowest cosine to fp32 on the calibration texts %.5f", lowest)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.fp32_session = self.session
        if self.path != fp32:
            self.fp32_session = ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
        workers = threads or _cpus()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="hubembed-onnx") if workers > 1 else None

    def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        if not texts:
            return np.empty((0, self.width), dtype=np.float32)
        if self.prompt:
            texts = [self.prompt + t for t in texts]
        encoded = self.tokenizer(
            texts,
            truncation="longest_first",
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids="token_type_ids" in self.input_names,
        )
        ids: list[list[int]] = encoded["input_ids"]
        types = encoded.get("token_type_ids")
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        chunks = []
        start = 0
        while start < len(order):
            longest = len(ids[order[start]])
            rows = max(1, min(MAX_ROWS, TOKEN_BUDGET // longest))
            if longest > self.fp32_up_to:  # a sub-batch runs in one precision: stop at the line
                rows = min(rows, sum(1 for i in order[start : start + rows] if len(ids[i]) > self.fp32_up_to))
            chunks.append(order[start : start + rows])
            start += rows
        out = np.empty((len(texts), self.width), dtype=np.float32)
        run = self._pool.map if self._pool and len(chunks) > 1 else map
        for chunk, vectors in zip(chunks, run(lambda c: self._run(ids, types, c), chunks), strict=True):
            out[chunk] = vectors
        return out

    def close(self) -> None:
        pool, self._pool = self._pool, None  # later calls, if any, run one sub-batch at a time
        if pool is not None:
            pool.shutdown()

    def _run(self, ids: list[list[int]], types: list[list[int]] | None, rows: list[int]) -> np.ndarray:
        width = max(len(ids[i]) for i in rows)
        feed = {
            "input_ids": np.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=np.int64),
            "attention_mask": np.zeros((len(rows), width), dtype=np.int64),
            "token_type_ids": np.full((len(rows), width), self.tokenizer.pad_token_type_id, dtype=np.int64),
        }
        left = self.tokenizer.padding_side == "left"
        for r, i in enumerate(rows):
            span = slice(width - len(ids[i]), width) if left else slice(0, len(ids[i]))
            feed["input_ids"][r, span] = ids[i]
            feed["attention_mask"][r, span] = 1
            if types is not None:
                feed["token_type_ids"][r, span] = types[i]
        session = self.session if width > self.fp32_up_to else self.fp32_session
        hidden = session.run(None, {n: feed[n] for n in self.input_names})[0]
        return pool_outputs(
            hidden,
            feed["attention_mask"],
            prompt_length=self.prompt_length,
            pooling=self.pooling,
            model_normalizes=self._model_normalizes,
            truncate_dim=self.truncate_dim,
            normalize=self.settings.normalize,
        )


def pool_outputs(
    hidden: np.ndarray,
    mask: np.ndarray,
    *,
    prompt_length: int,
    pooling: str,
    model_normalizes: bool,
    truncate_dim: int | None,
    normalize: bool,
) -> np.ndarray:
    """What sentence-transformers does after the transformer, on its token outputs HIDDEN:
    the pooling (CLS, else the mean over MASK), the model's own Normalize, truncate_dim, then
    the build's normalisation. Shared by the onnx backend and hubembed/query.py."""
    if prompt_length:
        # Like Pooling(include_prompt=False): the prompt's tokens are attended to, not pooled.
        first = mask.argmax(axis=1)[:, None]
        mask = mask * (np.arange(mask.shape[1])[None, :] >= first + prompt_length)
    if pooling == "cls":
        vectors = hidden[np.arange(len(hidden)), mask.argmax(axis=1)]
    else:
        weights = mask[:, :, None].astype(np.float32)
        vectors = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if model_normalizes:
        vectors = unit_rows(vectors)
    if truncate_dim:
        vectors = vectors[:, :truncate_dim]
    if normalize:
        vectors = unit_rows(vectors)
    return vectors.astype(np.float32, copy=False)


def make_onnx_embedder(
    model: SentenceTransformer,
    settings: EmbedSettings,
    *,
    threads: int | None = None,
    precision: str = "fp32",
    batch_size: int = 32,
) -> OnnxEmbedder:
    """An OnnxEmbedder for MODEL, exporting it on first use (cached under hubembed's cache dir).

    THREADS (sub-batches run at once, one core each) defaults to the CPUs this process may use.
    PRECISION "int8" runs the export quantised (hubembed/onnx_int8.py): faster, vectors within
    cosine 0.999 of fp32. Raises UsageError when onnxruntime is missing and ModelError for a
    model the onnx backend cannot run (or, for int8, one that int8 moves too far).
    """
    return OnnxEmbedder(model, settings, threads=threads, precision=precision, batch_size=batch_size)
