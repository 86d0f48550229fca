"""The one place that reads the environment.

huggingface_hub already owns HF_TOKEN, HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE; we ask it
rather than re-reading them, so hubembed and the clients it drives always agree.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_COLUMN = "embedding"
DEFAULT_SPLIT = "train"
SAMPLE_PREFIX = "sample:"
SAMPLES = {"medicare-faqs": "medicare_faqs.csv"}


def hf_token() -> str | None:
    """The token from HF_TOKEN or the huggingface_hub login, or None."""
    from huggingface_hub import get_token

    return get_token()


def hf_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def inference_base() -> str:
    """Base of the HF router's hf-inference routes; HUBEMBED_INFERENCE_BASE points it elsewhere
    (a proxy, or a local server in tests)."""
    return os.environ.get("HUBEMBED_INFERENCE_BASE", "https://router.huggingface.co/hf-inference").rstrip("/")


def cache_dir() -> Path:
    """Where hubembed keeps its own working files (checkpoints), under the HF cache."""
    override = os.environ.get("HUBEMBED_CACHE")
    if override:
        return Path(override)
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hubembed"


def sample_path(name: str) -> Path:
    """Path of a dataset shipped inside the package (``sample:medicare-faqs``)."""
    return Path(__file__).parent / "data" / SAMPLES[name]
