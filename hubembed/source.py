"""Source: turn SRC (a Hub dataset, local files, or a bundled sample) into rows of text."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _hub, config
from .errors import ColumnError, InvalidTextError, SourceError

if TYPE_CHECKING:
    import datasets
    import numpy as np
    import pyarrow as pa

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


@dataclass
class ResolvedSource:
    """The files open_source reads for SRC, found without reading them.

    The Ray engine reads these itself; ``load_source`` reads them with `datasets`.
    """

    info: SourceInfo
    format: str  # the datasets builder: "parquet", "csv", "json", ...
    files: list[str]  # local paths, or hf:// URLs pinned to the commit
    features: datasets.Features | None = None  # declared by the repo's card, if any
    builder: Any = field(default=None, repr=False)  # the Hub builder, so loading resolves nothing again


def open_source(
    src: str,
    *,
    revision: str | None = None,
    config_name: str | None = None,
    split: str | None = None,
    token: str | None = None,
) -> tuple[datasets.Dataset, SourceInfo]:
    """Open SRC as one split of a datasets.Dataset. Raises SourceError for anything the user can fix."""
    resolved = resolve_source(src, revision=revision, config_name=config_name, split=split, token=token)
    return load_source(resolved), resolved.info


def resolve_source(
    src: str,
    *,
    revision: str | None = None,
    config_name: str | None = None,
    split: str | None = None,
    token: str | None = None,
) -> ResolvedSource:
    """Which files, config and split SRC means, as `datasets` resolves them; reads no rows."""
    if src.startswith(config.SAMPLE_PREFIX):
        name = src[len(config.SAMPLE_PREFIX) :]
        if name not in config.SAMPLES:
            raise SourceError(f"unknown sample {name!r}; available: {', '.join(config.SAMPLES)}")
        return _resolve_local(config.sample_path(name), src, split)
    path = Path(src)
    if path.exists():
        return _resolve_local(path, src, split)
    repo_id = _hub.strip_hf_prefix(src)
    if not _hub.looks_like_repo_id(repo_id):
        raise SourceError(
            f"source {src!r} is neither an existing file or folder nor a Hub dataset id like 'user/name'"
        )
    return _resolve_hub(repo_id, revision, config_name, split, token)


def load_source(resolved: ResolvedSource) -> datasets.Dataset:
    """Read RESOLVED's rows with `datasets`."""
    import datasets

    if resolved.builder is not None:
        with _hub_read_errors(resolved.info.id):
            resolved.builder.download_and_prepare()
            ds = resolved.builder.as_dataset(split=resolved.info.split)
        assert isinstance(ds, datasets.Dataset)
        return ds
    src = resolved.info.id
    try:
        return datasets.load_dataset(resolved.format, data_files=resolved.files, split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        if "corresponds to no data" in str(exc):  # a csv with a header and no rows
            raise SourceError(f"the source dataset is empty: {src!r} has no rows to embed") from exc
        raise SourceError(f"cannot read {src!r}: {exc}") from exc


def _resolve_local(path: Path, src: str, split: str | None) -> ResolvedSource:
    files = sorted(p for p in path.rglob("*") if p.suffix in FILE_BUILDERS) if path.is_dir() else [path]
    if not files:
        raise SourceError(f"{src!r} holds no csv, json, jsonl or parquet files")
    builders = {FILE_BUILDERS.get(p.suffix) for p in files}
    if None in builders or len(builders) > 1:
        raise SourceError(
            f"cannot read {src!r}: give csv, json/jsonl or parquet files, all of one format "
            f"(found {', '.join(sorted({p.suffix or p.name for p in files}))})"
        )
    digest = hashlib.sha256()
    for p in files:
        with p.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    info = SourceInfo("local", src, "sha256:" + digest.hexdigest(), None, split or config.DEFAULT_SPLIT)
    builder = builders.pop()
    assert builder is not None
    return ResolvedSource(info, builder, [str(p) for p in files])


def _resolve_hub(
    repo_id: str, revision: str | None, config_name: str | None, split: str | None, token: str | None
) -> ResolvedSource:
    import datasets
    from huggingface_hub import HfApi

    try:
        sha = HfApi().dataset_info(repo_id, revision=revision, token=token).sha
    except Exception as exc:
        mapped = _hub.source_error(exc, repo_id, revision, token)
        if mapped is None:
            raise
        raise mapped from exc
    assert sha is not None
    with _hub_read_errors(repo_id):
        builder = datasets.load_dataset_builder(repo_id, name=config_name, revision=sha, token=token)
        if split is None:
            split = _pick_split(builder, repo_id)
    # An unknown split has no files; load_source then fails with datasets' own message.
    files = list((builder.config.data_files or {}).get(split, []))
    info = SourceInfo("hub", repo_id, sha, builder.config.name, split)
    return ResolvedSource(info, builder.name, files, builder.info.features, builder)


@contextmanager
def _hub_read_errors(repo_id: str) -> Iterator[None]:
    from datasets.exceptions import DatasetNotFoundError

    try:
        yield
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


def _pick_split(builder: Any, repo_id: str) -> str:
    names = list(builder.config.data_files or {}) or list(builder.info.splits or {})
    if len(names) == 1:
        return str(names[0])
    if config.DEFAULT_SPLIT in names:
        others = [n for n in names if n != config.DEFAULT_SPLIT]
        log.info("using split 'train' of %s (also has %s; choose with --split)", repo_id, ", ".join(others))
        return config.DEFAULT_SPLIT
    raise SourceError(f"dataset {repo_id!r} has splits {', '.join(names)}: choose one with --split")


def text_columns(features: datasets.Features) -> list[str]:
    from datasets import Value

    return [
        name
        for name, feature in features.items()
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    ]


def choose_column(features: datasets.Features, column: str | None) -> str:
    """The text column to embed: COLUMN if given and valid, else the only string column."""
    candidates = text_columns(features)
    names = list(features)
    if column is None:
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise ColumnError(
                f"the source has no text column (columns: {', '.join(names)}); "
                "embed a dataset with a string column"
            )
        raise ColumnError(
            f"the source has several text columns: {', '.join(candidates)}; choose one with --column"
        )
    if column not in names:
        raise ColumnError(f"column {column!r} does not exist; available columns: {', '.join(names)}")
    if column not in candidates:
        feature = features[column]
        kind = getattr(feature, "dtype", type(feature).__name__)
        listed = ", ".join(candidates) or "none"
        raise ColumnError(f"column {column!r} holds {kind}, not text; text columns: {listed}")
    return column


def bad_texts(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean mask of the null or blank texts, which no model should be asked to embed."""
    import numpy as np
    import pyarrow.compute as pc

    bad = pc.or_kleene(pc.is_null(texts), pc.equal(pc.utf8_trim_whitespace(texts), ""))
    return np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool)


def refuse_bad_texts(column: str, bad: np.ndarray) -> InvalidTextError:
    """The error for the null or empty texts flagged in BAD (a mask over the whole source)."""
    import numpy as np

    bad_rows = np.flatnonzero(bad)
    first = ", ".join(str(i) for i in bad_rows[:5])
    more = f" and {len(bad_rows) - 5} more" if len(bad_rows) > 5 else ""
    return InvalidTextError(
        f"column {column!r} has {len(bad_rows)} null or empty texts (rows {first}{more}); "
        "fix them in the source, or pass --skip-empty to leave those rows out",
        rows=[int(i) for i in bad_rows[:5]],
    )


EMPTY_SOURCE = "the source dataset is empty: there is nothing to embed"


def all_texts_bad(column: str) -> SourceError:
    return SourceError(f"every text in column {column!r} is null or empty: there is nothing to embed")


def check_texts(ds: datasets.Dataset, column: str, *, skip_empty: bool) -> tuple[datasets.Dataset, int]:
    """Apply the null/empty-text policy: fail naming the first bad rows, or drop them with skip_empty.

    Returns the dataset to embed and how many rows were skipped.
    """
    import numpy as np

    bad = bad_texts(ds.data.column(column))
    if len(ds) == 0:
        raise SourceError(EMPTY_SOURCE)
    if not bad.any():
        return ds, 0
    if not skip_empty:
        raise refuse_bad_texts(column, bad)
    keep = np.flatnonzero(~bad)
    if len(keep) == 0:
        raise all_texts_bad(column)
    log.warning("skipping %d rows with null or empty %r (--skip-empty)", int(bad.sum()), column)
    return ds.select(keep).flatten_indices(), int(bad.sum())
