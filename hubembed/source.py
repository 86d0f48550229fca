"""Source: turn SRC (a Hub dataset, local files, or a bundled sample) into rows of text."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _hub, config
from .errors import ColumnError, InvalidTextError, SourceError

if TYPE_CHECKING:
    import datasets

log = logging.getLogger("hubembed")

# The file formats hubembed reads, and the datasets builder for each.
FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class SourceInfo:
    """Where the rows came from, as recorded in the card."""

    kind: str  # "hub" or "local"
    id: str  # repo id, or the path as given
    revision: str  # commit sha for the Hub, sha256 of the files for local data
    config: str | None
    split: str
    column: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_source(
    src: str,
    *,
    revision: str | None = None,
    config_name: str | None = None,
    split: str | None = None,
    token: str | None = None,
) -> tuple[datasets.Dataset, SourceInfo]:
    """Open SRC as one split of a datasets.Dataset. Raises SourceError for anything the user can fix."""
    if src.startswith(config.SAMPLE_PREFIX):
        name = src[len(config.SAMPLE_PREFIX) :]
        if name not in config.SAMPLES:
            raise SourceError(f"unknown sample {name!r}; available: {', '.join(config.SAMPLES)}")
        return _open_local(config.sample_path(name), src, split)
    path = Path(src)
    if path.exists():
        return _open_local(path, src, split)
    repo_id = _hub.strip_hf_prefix(src)
    if not _hub.looks_like_repo_id(repo_id):
        raise SourceError(
            f"source {src!r} is neither an existing file or folder nor a Hub dataset id like 'user/name'"
        )
    return _open_hub(repo_id, revision, config_name, split, token)


def _open_local(path: Path, src: str, split: str | None) -> tuple[datasets.Dataset, SourceInfo]:
    import datasets

    files = sorted(p for p in path.rglob("*") if p.suffix in FILE_BUILDERS) if path.is_dir() else [path]
    if not files:
        raise SourceError(f"{src!r} holds no csv, json, jsonl or parquet files")
    builders = {FILE_BUILDERS.get(p.suffix) for p in files}
    if None in builders or len(builders) > 1:
        raise SourceError(
            f"cannot read {src!r}: give csv, json/jsonl or parquet files, all of one format "
            f"(found {', '.join(sorted({p.suffix or p.name for p in files}))})"
        )
    try:
        ds = datasets.load_dataset(builders.pop(), data_files=[str(p) for p in files], split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        if "corresponds to no data" in str(exc):  # a csv with a header and no rows
            raise SourceError(f"the source dataset is empty: {src!r} has no rows to embed") from exc
        raise SourceError(f"cannot read {src!r}: {exc}") from exc
    digest = hashlib.sha256()
    for p in files:
        with p.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    info = SourceInfo("local", src, "sha256:" + digest.hexdigest(), None, split or config.DEFAULT_SPLIT)
    return ds, info


def _open_hub(
    repo_id: str, revision: str | None, config_name: str | None, split: str | None, token: str | None
) -> tuple[datasets.Dataset, SourceInfo]:
    import datasets
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub import HfApi

    try:
        sha = HfApi().dataset_info(repo_id, revision=revision, token=token).sha
    except Exception as exc:
        mapped = _hub.source_error(exc, repo_id, revision, token)
        if mapped is None:
            raise
        raise mapped from exc
    assert sha is not None
    try:
        builder = datasets.load_dataset_builder(repo_id, name=config_name, revision=sha, token=token)
        if split is None:
            split = _pick_split(builder, repo_id)
        builder.download_and_prepare()
        ds = builder.as_dataset(split=split)
    except DatasetNotFoundError as exc:
        # Gated datasets show their metadata to anyone; datasets finds out when it reads files.
        if "gated" in str(exc):
            raise SourceError(
                f"dataset {repo_id!r} is gated: accept its conditions at {_hub.repo_url(repo_id)} "
                f"and {_hub.LOGIN_HINT}"
            ) from exc
        raise SourceError(f"cannot read dataset {repo_id!r}: {exc}") from exc
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise SourceError(f"cannot read dataset {repo_id!r}: {exc}") from exc
    assert isinstance(ds, datasets.Dataset)
    return ds, SourceInfo("hub", repo_id, sha, builder.config.name, split)


def _pick_split(builder: Any, repo_id: str) -> str:
    names = list(builder.config.data_files or {}) or list(builder.info.splits or {})
    if len(names) == 1:
        return str(names[0])
    if config.DEFAULT_SPLIT in names:
        others = [n for n in names if n != config.DEFAULT_SPLIT]
        log.info("using split 'train' of %s (also has %s; choose with --split)", repo_id, ", ".join(others))
        return config.DEFAULT_SPLIT
    raise SourceError(f"dataset {repo_id!r} has splits {', '.join(names)}: choose one with --split")


def text_columns(ds: datasets.Dataset) -> list[str]:
    from datasets import Value

    return [
        name
        for name, feature in ds.features.items()
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    ]


def choose_column(ds: datasets.Dataset, column: str | None) -> str:
    """The text column to embed: COLUMN if given and valid, else the only string column."""
    candidates = text_columns(ds)
    if column is None:
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise ColumnError(
                f"the source has no text column (columns: {', '.join(ds.column_names)}); "
                "embed a dataset with a string column"
            )
        raise ColumnError(
            f"the source has several text columns: {', '.join(candidates)}; choose one with --column"
        )
    if column not in ds.column_names:
        raise ColumnError(
            f"column {column!r} does not exist; available columns: {', '.join(ds.column_names)}"
        )
    if column not in candidates:
        feature = ds.features[column]
        kind = getattr(feature, "dtype", type(feature).__name__)
        listed = ", ".join(candidates) or "none"
        raise ColumnError(f"column {column!r} holds {kind}, not text; text columns: {listed}")
    return column


def check_texts(ds: datasets.Dataset, column: str, *, skip_empty: bool) -> tuple[datasets.Dataset, int]:
    """Apply the null/empty-text policy: fail naming the first bad rows, or drop them with skip_empty.

    Returns the dataset to embed and how many rows were skipped.
    """
    import numpy as np
    import pyarrow.compute as pc

    texts = ds.data.column(column)
    bad = pc.or_kleene(pc.is_null(texts), pc.equal(pc.utf8_trim_whitespace(texts), ""))
    bad_rows = np.flatnonzero(bad.to_numpy(zero_copy_only=False).astype(bool, copy=False))
    if len(ds) == 0:
        raise SourceError("the source dataset is empty: there is nothing to embed")
    if len(bad_rows) == 0:
        return ds, 0
    if not skip_empty:
        first = ", ".join(str(i) for i in bad_rows[:5])
        more = f" and {len(bad_rows) - 5} more" if len(bad_rows) > 5 else ""
        raise InvalidTextError(
            f"column {column!r} has {len(bad_rows)} null or empty texts (rows {first}{more}); "
            "fix them in the source, or pass --skip-empty to leave those rows out",
            rows=[int(i) for i in bad_rows[:5]],
        )
    keep = np.setdiff1d(np.arange(len(ds)), bad_rows)
    if len(keep) == 0:
        raise SourceError(f"every text in column {column!r} is null or empty: there is nothing to embed")
    log.warning("skipping %d rows with null or empty %r (--skip-empty)", len(bad_rows), column)
    return ds.select(keep).flatten_indices(), len(bad_rows)
