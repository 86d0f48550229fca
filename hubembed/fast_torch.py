"""The fast torch path: what ``--backend auto`` runs on a GPU.

``SentenceTransformer.encode`` leaves most of a GPU idle on small encoders: it tokenises on the
main thread between forward passes, pads every batch to its longest text, and copies each
batch's output to the host before starting the next. Here, instead:

- the texts are sorted by token count and cut into batches of at most a token budget (SIZES)
  (rows x longest), so short texts run in wide batches and padding stays small;
- a thread tokenises the next slice of texts (the Rust tokenizer, padded in numpy) while the
  GPU runs the current one, and hands over pinned tensors that are copied without blocking;
- the model runs in fp16 (bf16 for a model whose config says it was trained in it) with SDPA
  attention; pooling and normalisation run on the device, and each slice's vectors are
  copied back with one non-blocking copy into pinned memory; the input order is restored at
  the end of the call;
- several GPUs get one process each (MultiDeviceEmbedder), every call shared between them.

Before the first text, the half-precision model is compared with fp32 on hubembed's calibration
texts; below MIN_COSINE the embedder falls back to fp32 and says so. All of this runs on the CPU
too (fp32 there gives encode's vectors), which is how it is tested; a GPU changes only speed.
Only Transformer + Pooling(mean|cls) [+ Normalize] models are supported, as with the onnx
backend; ``--backend auto`` keeps encode for the rest.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from .embedder import Embedder, EmbedSettings
from .errors import UsageError
from .onnx_embedder import TextPlan, text_plan
from .vectors import unit_rows

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("hubembed")

PRECISIONS = ("fp32", "fp16", "bf16")
# Half precision is kept only where its vectors stay this close to fp32 on the calibration texts.
MIN_COSINE = 0.999
# Per device kind: (tokens per forward pass, rows per forward pass at most, texts tokenised at a
# time by the thread, texts per embed_batch call). On a GPU, wide passes keep it busy and a call
# is about a second of work (a checkpoint each); on a CPU (the tests; auto runs onnx there)
# passes stay small enough for the cache, as in the onnx backend.
SIZES = {"cuda": (32_768, 2_048, 4_096, 32_768), "cpu": (2_048, 64, 512, 2_048)}


def half_dtype_name(model_config: Any) -> str:
    """ "bf16" for a model whose config says it was trained in bfloat16, else "fp16"."""
    dtype = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None)
    return "bf16" if "bfloat16" in str(dtype) else "fp16"


class FastTorchEmbedder(Embedder):
    """A sentence-transformers model's vectors, computed by torch with the batching above.

    PRECISION: "auto" (fp16/bf16 on a GPU, fp32 on a CPU), or one of PRECISIONS. A half
    precision whose vectors are below MIN_COSINE of fp32 on the calibration texts falls back to
    fp32; ``precision`` says which one runs, ``calibration_cosine`` what was measured.
    CALIBRATION: the texts compared (default: hubembed's bundled calibration texts).
    """

    def __init__(
        self,
        model: SentenceTransformer,
        settings: EmbedSettings,
        *,
        precision: str = "auto",
        token_budget: int | None = None,
        max_rows: int | None = None,
        slice_texts: int | None = None,
        min_cosine: float = MIN_COSINE,
        calibration: list[str] | None = None,
    ) -> None:
        import torch

        if precision != "auto" and precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}; use auto or one of {', '.join(PRECISIONS)}")
        self.plan: TextPlan = text_plan(model, settings)
        self.settings = settings
        self.width: int = self.plan.width
        self.dimension = self.width
        self.device = torch.device(model.device)
        kind = "cuda" if self.device.type == "cuda" else "cpu"
        budget, rows, per_slice, per_call = SIZES[kind]
        self.token_budget = token_budget or budget
        self.max_rows = max_rows or rows
        self.slice_texts = slice_texts or per_slice
        self.texts_per_call = per_call
        self._pinned = kind == "cuda"
        hf = self.plan.transformer.auto_model
        fp32 = copy.deepcopy(hf).to(self.device, torch.float32).eval()
        _use_sdpa(fp32)
        if precision == "auto":
            precision = half_dtype_name(hf.config) if kind == "cuda" else "fp32"
        self.precision = precision
        self.calibration_cosine: float | None = None
        self.model = fp32
        self._prep = ThreadPoolExecutor(1, thread_name_prefix="hubembed-tokenize")
        self._out: torch.Tensor | None = None
        if precision != "fp32":
            dtype = torch.float16 if precision == "fp16" else torch.bfloat16
            self.model = copy.deepcopy(fp32).to(dtype)
            self._calibrate(fp32, min_cosine, calibration)

    def _calibrate(self, fp32: Any, min_cosine: float, texts: list[str] | None) -> None:
        from .onnx_int8 import calibration_texts

        texts = texts or calibration_texts()
        half = self.embed_batch(texts)
        half_model, self.model = self.model, fp32
        full = self.embed_batch(texts)
        self.calibration_cosine = float((unit_rows(half) * unit_rows(full)).sum(axis=1).min())
        if self.calibration_cosine < min_cosine:
            log.warning(
                "%s moves this model's vectors too far from fp32 (lowest cosine %.5f on hubembed's "
                "calibration texts, below %s): embedding in fp32 instead",
                self.precision,
                self.calibration_cosine,
                min_cosine,
            )
            self.precision = "fp32"
            return
        log.info(
            "%s: lowest cosine to fp32 on the calibration texts %.5f", self.precision, self.calibration_cosine
        )
        self.model = half_model

    def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        import torch

        n = len(texts)
        if not n:
            return np.empty((0, self.width), dtype=np.float32)
        if self.plan.prompt:
            texts = [self.plan.prompt + t for t in texts]
        # Longest first by characters, so each slice holds texts of similar token counts.
        by_chars = sorted(range(n), key=lambda i: -len(texts[i]))
        starts = range(0, n, self.slice_texts)
        if self._out is None or len(self._out) < n:  # pinned memory is slow to allocate: reuse it
            self._out = torch.empty((n, self.width), dtype=torch.float32, pin_memory=self._pinned)
        out = self._out
        positions = np.empty(n, dtype=np.int64)
        pending: deque[Future[list[tuple[np.ndarray, dict[str, torch.Tensor]]]]] = deque()
        todo = iter(starts)

        def submit() -> None:
            start = next(todo, None)
            if start is not None:
                rows = by_chars[start : start + self.slice_texts]
                pending.append(self._prep.submit(self._tokenize, [texts[i] for i in rows], rows))

        submit()
        submit()  # one slice tokenised ahead of the one running
        done = 0
        with torch.inference_mode():
            while pending:
                batches = pending.popleft().result()
                submit()
                pooled = [self._forward(feed) for _, feed in batches]
                vectors = torch.cat(pooled) if len(pooled) > 1 else pooled[0]
                count = len(vectors)
                out[done : done + count].copy_(vectors, non_blocking=self._pinned)
                positions[done : done + count] = np.concatenate([p for p, _ in batches])
                done += count
        if self._pinned:
            torch.cuda.synchronize(self.device)
        result = np.empty((n, self.width), dtype=np.float32)
        result[positions] = out[:n].numpy()
        return result

    def _tokenize(
        self, texts: list[str], rows: list[int]
    ) -> list[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """TEXTS (the call's ROWS) as forward passes: (the rows of each, its input tensors)."""
        import torch

        plan = self.plan
        encoded = plan.tokenizer(
            texts,
            padding=True,
            truncation="longest_first",
            max_length=plan.max_length,
            return_tensors="np",
            return_token_type_ids="token_type_ids" in plan.input_names,
        )
        mask = encoded["attention_mask"]
        lengths = mask.sum(axis=1)
        order = np.argsort(-lengths, kind="stable")
        left = plan.tokenizer.padding_side == "left"
        row_ids = np.asarray(rows, dtype=np.int64)
        batches = []
        start = 0
        while start < len(order):
            longest = int(lengths[order[start]])
            take = order[start : start + max(1, min(self.max_rows, self.token_budget // max(longest, 1)))]
            start += len(take)
            span = slice(mask.shape[1] - longest, None) if left else slice(0, longest)
            feed = {}
            for name in plan.input_names:
                tensor = torch.from_numpy(np.ascontiguousarray(encoded[name][take, span], dtype=np.int64))
                feed[name] = tensor.pin_memory() if self._pinned else tensor
            batches.append((row_ids[take], feed))
        return batches

    def _forward(self, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        feed = {k: v.to(self.device, non_blocking=self._pinned) for k, v in feed.items()}
        hidden = self.model(**feed).last_hidden_state.float()
        return pool_torch(
            hidden,
            feed["attention_mask"],
            prompt_length=self.plan.prompt_length,
            pooling=self.plan.pooling,
            model_normalizes=self.plan.model_normalizes,
            truncate_dim=self.plan.truncate_dim,
            normalize=self.settings.normalize,
        ).to(torch.float32)

    def close(self) -> None:
        self._prep.shutdown(wait=False, cancel_futures=True)


def pool_torch(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    *,
    prompt_length: int,
    pooling: str,
    model_normalizes: bool,
    truncate_dim: int | None,
    normalize: bool,
) -> torch.Tensor:
    """onnx_embedder.pool_outputs on the device: the same steps, in torch."""
    import torch
    import torch.nn.functional as F

    if prompt_length:
        first = mask.argmax(dim=1, keepdim=True)
        positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
        mask = mask * (positions >= first + prompt_length)
    if pooling == "cls":
        vectors = hidden[torch.arange(len(hidden), device=hidden.device), mask.argmax(dim=1)]
    else:
        weights = mask[:, :, None].to(hidden.dtype)
        vectors = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if model_normalizes:
        vectors = F.normalize(vectors, p=2, dim=1)
    if truncate_dim:
        vectors = vectors[:, :truncate_dim]
    if normalize:
        vectors = F.normalize(vectors, p=2, dim=1)
    return vectors


def _use_sdpa(hf: Any) -> None:
    try:
        hf.set_attn_implementation("sdpa")
    except (ValueError, ImportError, AttributeError) as exc:  # an architecture without it: eager
        log.debug("SDPA attention not available for this model (%s): keeping its own", exc)


class MultiDeviceEmbedder(Embedder):
    """The fast path on several devices: one process per device (spawned, each with its own
    copy of the model, so no GIL is shared), every call split between them.

    MAKE(device) -> FastTorchEmbedder runs in each process; it must be picklable (a
    functools.partial of a module-level function).
    """

    def __init__(self, make: Any, devices: list[str]) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        self._workers = [
            ProcessPoolExecutor(1, mp_context=context, initializer=_start_worker, initargs=(make, d))
            for d in devices
        ]
        # Every worker loads its model now, so a bad model fails here, not mid-build.
        infos = [w.submit(_worker_info).result() for w in self._workers]
        self.dimension = infos[0][0]
        self.precision = infos[0][1]
        self.texts_per_call = infos[0][2] * len(devices)

    def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        n = len(self._workers)
        # Interleaved shares: the build hands texts over longest first, so each device gets
        # its part of every length.
        futures = [w.submit(_worker_embed, texts[k::n]) for k, w in enumerate(self._workers)]
        out = np.empty((len(texts), int(self.dimension or 0)), dtype=np.float32)
        for k, future in enumerate(futures):
            out[k::n] = future.result()
        return out

    def close(self) -> None:
        for worker in self._workers:
            worker.shutdown(cancel_futures=True)
        self._workers = []


_worker: FastTorchEmbedder | None = None


def _start_worker(make: Any, device: str) -> None:
    global _worker
    _worker = make(device)


def _worker_info() -> tuple[int, str, int]:
    assert _worker is not None
    return int(_worker.dimension or 0), _worker.precision, int(_worker.texts_per_call or 0)


def _worker_embed(texts: list[str]) -> np.ndarray:
    assert _worker is not None
    return _worker.embed_batch(texts)
