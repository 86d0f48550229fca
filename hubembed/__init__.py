"""hubembed: embed a text dataset from the Hugging Face Hub, push it back, load and search it.

>>> import hubembed
>>> hubembed.build("sample:medicare-faqs", "./faqs-embedded")        # doctest: +SKIP
>>> hubembed.load("./faqs-embedded").search("How can Medicare help me?", top_k=5)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BuildResult",
    "EmbeddedDataset",
    "__version__",
    "build",
    "export",
    "load",
    "map",
    "semantic_search",
]

if TYPE_CHECKING:
    from .exporter import export
    from .loader import EmbeddedDataset, load
    from .pipeline import BuildResult, build
    from .search import semantic_search

# Import lazily: `hubembed --help` and `import hubembed` stay fast; torch and datasets load on use.
_LAZY = {
    "build": "pipeline",
    "BuildResult": "pipeline",
    "load": "loader",
    "EmbeddedDataset": "loader",
    "semantic_search": "search",
    "export": "exporter",
}


def map(dst: str, *, token: str | None = None, device: str = "auto") -> Any:
    """Add a 2-D map of DST's rows to DST (map_x, map_y, map.png, the card's map section) in one
    commit; returns (Map, commit sha or path). Needs hubembed[map] (hubembed/maps.py)."""
    from .maps import publish

    return publish(dst, token=token, device=device)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hubembed' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
