"""Which runtime runs a local model, resolved where the model loads (here, or on a Ray worker).

``--backend auto`` (the default) takes the fastest path that gives encode's vectors on the
device at hand: on a CPU the model's ONNX export in fp32 (hubembed/onnx_embedder.py: cosine
> 0.9999 to encode, 1.3x-1.5x its speed), on CUDA GPUs the fast torch path
(hubembed/fast_torch.py: fp16/bf16, checked against fp32), elsewhere (MPS) encode; several GPUs get one
process each. A model
those paths cannot run (not Transformer -> Pooling [-> Normalize]) keeps encode. ``torch``
(encode), ``onnx`` and ``onnx-int8`` stay selectable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from .embedder import Embedder, EmbedSettings, LocalEmbedder
from .errors import UsageError
from .models import ResolvedModel, load_model, pick_devices
from .options import ONNX_PRECISION

log = logging.getLogger("hubembed")

FAST_TORCH = "fast-torch"


@dataclass(frozen=True)
class Choice:
    backend: str  # torch, fast-torch, onnx or onnx-int8
    devices: list[str]


def choose(backend: str, device: str) -> Choice:
    """The runtime and devices for BACKEND ("auto" or an explicit one) on DEVICE (as given to
    --device). Raises ModelError for a device this machine does not have."""
    if backend in ONNX_PRECISION:
        return Choice(backend, ["cpu"])
    devices = pick_devices(device)
    if backend != "auto":
        return Choice(backend, devices)
    if all(d.startswith("cuda") for d in devices):
        return Choice(FAST_TORCH, devices)
    if devices == ["cpu"]:
        return Choice("onnx", devices)
    return Choice("torch", devices)


def local_embedder(
    resolved: ResolvedModel,
    device: str,
    trust_remote_code: bool,
    settings: EmbedSettings,
    token: str | None,
    backend: str = "auto",
    batch_size: int = 32,
) -> tuple[Embedder, Any, dict[str, Any]]:
    """(the embedder, the sentence-transformers model it runs, {"backend", "precision"}: what
    actually runs, for the card)."""
    choice = choose(backend, device)
    name = choice.backend
    several = name == FAST_TORCH and len(choice.devices) > 1
    # With several GPUs each worker process loads its own copy; this one is for checks and prompts.
    here = "cpu" if several else choice.devices[0]
    model = load_model(resolved, device=here, token=token, trust_remote_code=trust_remote_code)
    try:
        if name in ONNX_PRECISION:
            from .onnx_embedder import make_onnx_embedder

            precision = ONNX_PRECISION[name]
            embedder: Embedder = make_onnx_embedder(
                model, settings, precision=precision, batch_size=batch_size
            )
            return embedder, model, {"backend": name, "precision": precision}
        if name == FAST_TORCH:
            from .fast_torch import FastTorchEmbedder, MultiDeviceEmbedder
            from .onnx_embedder import text_plan

            if several:
                text_plan(model, settings)  # refuses a model the fast path cannot run, here
                make = partial(_fast_on, resolved, token, trust_remote_code, settings)
                multi = MultiDeviceEmbedder(make, choice.devices)
                return multi, model, {"backend": name, "precision": multi.precision}
            fast = FastTorchEmbedder(model, settings)
            return fast, model, {"backend": name, "precision": fast.precision}
    except UsageError as exc:
        if backend != "auto":
            raise
        # A model stack these paths cannot run, or onnxruntime missing: encode runs it. A bad
        # prompt name or truncate_dim is refused by encode below with the same message.
        log.info("--backend auto: %s; using encode (torch)", exc)
    embedder = LocalEmbedder(model, settings, choice.devices, batch_size=batch_size)
    return embedder, model, {"backend": "torch", "precision": _dtype_name(model)}


def _fast_on(
    resolved: ResolvedModel, token: str | None, trust_remote_code: bool, settings: EmbedSettings, device: str
) -> Any:
    """The fast path's embedder on DEVICE, made in a worker process of MultiDeviceEmbedder."""
    from .fast_torch import FastTorchEmbedder

    model = load_model(resolved, device=device, token=token, trust_remote_code=trust_remote_code)
    return FastTorchEmbedder(model, settings)


def _dtype_name(model: Any) -> str:
    dtype = str(getattr(model, "dtype", "float32"))
    return {"torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(dtype, "fp32")
