"""int8 variant of the onnx backend (``--backend onnx-int8``): the exported fp32 graph with its
matrix products rewritten to 8-bit integers, about 1.4x faster per core on CPUs with VNNI.

Plain dynamic quantisation (one scale per tensor) moves this family's vectors to cosine 0.93-0.99
of fp32: a few activation channels and a few tokens are far larger than the rest, and one scale
for all of them leaves the others a handful of levels. Here, after SmoothQuant (Xiao et al., 2023):

- each input channel is divided by s = max|x|^ALPHA / max|w|^(1-ALPHA), and the weight's row
  multiplied by it, so outlier channels are shared with the weights (the maxima come from
  running the model on ``data/calibration.txt``, shipped text, so the result is the same for
  every dataset and a refresh never mixes two quantisations);
- activations get one scale per token (row), weights one per output column;
- products whose input is wider than their output (the feed-forward's down projection, fed by
  GELU's lopsided output) stay fp32: quantising them costs more accuracy than the rest together;
- texts of at most FP32_UP_TO_TOKENS tokens run through the fp32 graph.

The result is checked against the fp32 graph on the calibration texts before it is kept; a model
that moves further than MIN_COSINE is refused (ModelError). See "Embedding (CPU)" in
benchmarks/README.md for the figures.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# Bump when the rewrite changes, so old cache entries are not reused.
QUANT_FORMAT = 1
ALPHA = 0.65
MIN_COSINE = 0.999
# Texts of at most this many tokens ([CLS] and [SEP] included) run in fp32: with few tokens to
# average over, int8 moved all-MiniLM-L6-v2's vectors to cosine 0.997 (3 tokens) - 0.999 (8);
# from 9 tokens on it held 0.9993 or more. They cost little, being short.
FP32_UP_TO_TOKENS = 10
CALIBRATION = Path(__file__).parent / "data" / "calibration.txt"


def calibration_texts() -> list[str]:
    return [line for line in CALIBRATION.read_text(encoding="utf-8").splitlines() if line.strip()]


def int8_path(fp32_path: Path) -> Path:
    return fp32_path.with_name(f"model-int8-v{QUANT_FORMAT}.onnx")


def quantize(model: SentenceTransformer, fp32_path: Path, out: Path, input_names: list[str]) -> float:
    """Write the int8 graph of FP32_PATH to OUT (atomically) and return its lowest cosine to fp32
    on the calibration texts. Raises ModelError, writing nothing, when that is below MIN_COSINE."""
    import onnx

    texts = calibration_texts()
    graph = onnx.load(str(fp32_path))
    maxima = _input_maxima(model, texts)
    _rewrite(graph, maxima)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        onnx.save(graph, str(tmp))
        lowest = _lowest_cosine(model, fp32_path, tmp, input_names, texts)
        if lowest < MIN_COSINE:
            raise ModelError(
                f"int8 moves this model's vectors too far from fp32 (lowest cosine {lowest:.4f} on "
                f"hubembed's calibration texts, below {MIN_COSINE}); use --backend onnx"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return lowest


def _weight_key(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _input_maxima(model: SentenceTransformer, texts: list[str]) -> dict[str, np.ndarray]:
    """sha256 of each Linear's weight (as the ONNX MatMul holds it, transposed) -> max |input| per
    input channel over TEXTS. Weights, not names, tie the graph to the modules: the exporter's
    node names differ between architectures and versions."""
    import torch

    maxima: dict[str, np.ndarray] = {}
    hooks = []
    transformer: Any = model[0]
    for module in transformer.auto_model.modules():
        if isinstance(module, torch.nn.Linear):
            key = _weight_key(module.weight.detach().float().cpu().numpy().T)

            def record(_m: Any, inputs: tuple[torch.Tensor, ...], _out: Any, key: str = key) -> None:
                x = inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1]).amax(0).cpu().numpy()
                maxima[key] = np.maximum(maxima[key], x) if key in maxima else x

            hooks.append(module.register_forward_hook(record))
    try:
        model.encode(texts, batch_size=16, show_progress_bar=False)
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def _rewrite(graph: Any, maxima: dict[str, np.ndarray]) -> None:
    """Replace each quantisable MatMul(x, W) of GRAPH by per-token int8 x times per-column int8 W."""
    from onnx import helper, numpy_helper

    g = graph.graph
    weights = {init.name: init for init in g.initializer}
    groups: dict[str, list[Any]] = defaultdict(list)  # activation -> the MatMuls that read it
    for node in g.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]])
        if w.ndim == 2 and w.shape[0] <= w.shape[1] and _weight_key(w) in maxima:
            groups[node.input[0]].append(node)
    if not groups:
        raise ModelError("found no matrix products to quantise in this model; use --backend onnx")

    added: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        added.append(numpy_helper.from_array(value, name))
        return name

    # One smoothing vector per group (its MatMuls share the activation), from all its weights.
    smooth: dict[str, np.ndarray] = {}
    for x, members in groups.items():
        ws = [numpy_helper.to_array(weights[n.input[1]]).astype(np.float32) for n in members]
        act = maxima[_weight_key(ws[0])]
        wmax = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
        smooth[x] = np.clip(act, 1e-5, None) ** ALPHA / np.clip(wmax, 1e-5, None) ** (1 - ALPHA)

    prefixes = {x: f"hubembed_q{k}_" for k, x in enumerate(groups)}
    nodes: list[Any] = []
    started: set[str] = set()
    for node in g.node:
        x = node.input[0] if node.op_type == "MatMul" else ""
        if x not in groups or node not in groups[x]:
            nodes.append(node)
            continue
        p = prefixes[x]
        s = smooth[x]
        if x not in started:
            const(f"{p}smooth", (1 / s).astype(np.float32))
            nodes += _quantize_rows(helper, const, x, p)
            started.add(x)
        i = groups[x].index(node)
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32) * s[:, None]
        scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127
        q = f"{p}{i}_"
        nodes += [
            helper.make_node(
                "MatMulIntegerToFloat",
                [
                    f"{p}xq",
                    const(f"{q}w", np.clip(np.round(w / scale), -127, 127).astype(np.int8)),
                    const(f"{q}one", np.array(1.0, np.float32)),
                    const(f"{q}wscale", scale.astype(np.float32)),
                    const(f"{q}zero", np.array(128, np.uint8)),
                ],
                [f"{q}y"],
                domain="com.microsoft",
            ),
            helper.make_node("Mul", [f"{q}y", f"{p}scale"], [node.output[0]]),
        ]
    del g.node[:]
    g.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [init for init in g.initializer if init.name in used]
    del g.initializer[:]
    g.initializer.extend(kept + added)
    if not any(op.domain == "com.microsoft" for op in graph.opset_import):
        graph.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _quantize_rows(helper: Any, const: Any, x: str, p: str) -> list[Any]:
    """Nodes giving {p}xq (uint8, zero point 128) and {p}scale (one per row) from X / smooth."""
    return [
        helper.make_node("Mul", [x, f"{p}smooth"], [f"{p}xs"]),
        helper.make_node("Abs", [f"{p}xs"], [f"{p}abs"]),
        helper.make_node("ReduceMax", [f"{p}abs"], [f"{p}max"], axes=[-1], keepdims=1),
        helper.make_node("Max", [f"{p}max", const(f"{p}tiny", np.array(1e-8, np.float32))], [f"{p}amax"]),
        helper.make_node("Div", [f"{p}amax", const(f"{p}127", np.array(127, np.float32))], [f"{p}scale"]),
        helper.make_node("Div", [f"{p}127", f"{p}amax"], [f"{p}inv"]),
        helper.make_node("Mul", [f"{p}xs", f"{p}inv"], [f"{p}xd"]),
        helper.make_node(
            "QuantizeLinear",
            [
                f"{p}xd",
                const(f"{p}unit", np.array(1.0, np.float32)),
                const(f"{p}zp", np.array(128, np.uint8)),
            ],
            [f"{p}xq"],
        ),
    ]


def _lowest_cosine(
    model: SentenceTransformer, fp32: Path, int8: Path, input_names: list[str], texts: list[str]
) -> float:
    """Lowest cosine between the two graphs' mean-pooled outputs over the TEXTS that run in int8."""
    import onnxruntime as ort

    tokenizer = model.tokenizer
    texts = [
        t for t, ids in zip(texts, tokenizer(texts)["input_ids"], strict=True) if len(ids) > FP32_UP_TO_TOKENS
    ]
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=model.max_seq_length, return_tensors="np"
    )
    feed = {n: encoded[n].astype(np.int64) for n in input_names}
    mask = encoded["attention_mask"][:, :, None].astype(np.float32)
    pooled = []
    for path in (fp32, int8):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        hidden = session.run(None, feed)[0]
        v = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
        pooled.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return float((pooled[0] * pooled[1]).sum(axis=1).min())
