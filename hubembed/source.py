"""Source: turn SRC (a Hub dataset, local files, or a bundled sample) into rows of text."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
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
    """The files SRC means, found without reading them.

    ``open_stream`` reads them: parquet files directly, other formats with `datasets`
    (``load_source``).
    """

    info: SourceInfo
    format: str  # the datasets builder: "parquet", "csv", "json", ...
    files: list[str]  # local paths, or hf:// URLs pinned to the commit
    features: datasets.Features | None = None  # declared by the repo's card, if any
    builder: Any = field(default=None, repr=False)  # the Hub builder, so loading resolves nothing again


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


# Rows per block of the stream: the window within which texts are deduplicated and sorted by
# length, and the unit of reading, checkpointing and writing. Fewer for long rows, so a block
# stays near BLOCK_BYTES whatever the texts.
BLOCK_ROWS = 32_768
BLOCK_BYTES = 64 << 20


@dataclass
class RowStream:
    """SRC's rows as Arrow tables of at most BLOCK_ROWS rows, in order, read as they are needed.

    Parquet files (local, or a Hub repo's at the pinned commit, downloaded to the HF cache
    once) are read a row group at a time; other formats are converted by `datasets` once and
    read from its memory-mapped Arrow file. Either way no block is held longer than it is used.
    """

    info: SourceInfo
    features: datasets.Features
    _blocks: Callable[[], Iterator[pa.Table]] = field(repr=False)
    _count: Callable[[], int] = field(repr=False)

    def blocks(self) -> Iterator[pa.Table]:
        return self._blocks()

    def count(self) -> int:
        """How many rows there are (for a Hub repo, once its files are downloaded)."""
        return self._count()


def open_stream(resolved: ResolvedSource, token: str | None = None) -> RowStream:
    """The rows of RESOLVED, to be read block by block."""
    if resolved.format == "parquet" and resolved.files:
        return _parquet_stream(resolved, token)
    ds = load_source(resolved)
    table = ds.data.table

    def blocks() -> Iterator[pa.Table]:
        import pyarrow as pa

        step = _block_rows(table.nbytes, table.num_rows)
        for batch in table.to_batches(max_chunksize=step):
            yield pa.Table.from_batches([batch])

    return RowStream(resolved.info, ds.features, blocks, lambda: len(ds))


def _block_rows(nbytes: int, rows: int) -> int:
    per_row = max(nbytes // max(rows, 1), 1)
    return int(min(BLOCK_ROWS, max(256, BLOCK_BYTES // per_row)))


def _parquet_stream(resolved: ResolvedSource, token: str | None) -> RowStream:
    import pyarrow.parquet as pq
    from datasets import Features

    src = resolved.info.id

    def local(name: str) -> str:
        if not name.startswith("hf://"):
            return name
        from urllib.parse import unquote

        from huggingface_hub import hf_hub_download

        # datasets' pinned form: hf://datasets/{repo_id}@{revision}/{path in repo}
        repo_id, _, rest = name.removeprefix(_hub.HF_PREFIX).partition("@")
        revision, _, path_in_repo = rest.partition("/")
        revision = unquote(revision)
        try:
            return hf_hub_download(repo_id, path_in_repo, repo_type="dataset", revision=revision, token=token)
        except Exception as exc:
            mapped = _hub.source_error(exc, repo_id, revision, token)
            if mapped is None:
                raise
            raise mapped from exc

    def open_file(name: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(local(name), memory_map=True)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise SourceError(f"cannot read {src!r}: {name.rsplit('/', 1)[-1]}: {exc}") from exc

    features = resolved.features
    if features is None:  # as datasets does: from the first file's schema
        features = Features.from_arrow_schema(open_file(resolved.files[0]).schema_arrow)
    schema = features.arrow_schema

    def count() -> int:
        # From the footers (a Hub repo's files are downloaded here, to the HF cache, once).
        return sum(open_file(f).metadata.num_rows for f in resolved.files)

    def blocks() -> Iterator[pa.Table]:
        import pyarrow as pa

        for name in resolved.files:
            pf = open_file(name)
            meta = pf.metadata
            nbytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            for batch in pf.iter_batches(batch_size=_block_rows(nbytes, meta.num_rows)):
                table = pa.Table.from_batches([batch])
                try:
                    yield table.select(schema.names).cast(schema)
                except (KeyError, ValueError, pa.ArrowInvalid) as exc:
                    raise SourceError(
                        f"cannot read {src!r}: {name.rsplit('/', 1)[-1]} does not match the other files "
                        f"or the features its card declares: {exc}"
                    ) from exc

    return RowStream(resolved.info, features, blocks, count)


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


def refuse_bad_texts(column: str, count: int, first: list[int]) -> InvalidTextError:
    """The error for COUNT null or empty texts, the first of them at rows FIRST (0-based)."""
    shown = ", ".join(str(i + 1) for i in first[:5])
    more = f" and {count - len(first[:5])} more" if count > len(first[:5]) else ""
    rows = "row" if count == 1 else "rows"
    return InvalidTextError(
        f"column {column!r} has {plural(count, 'null or empty text')} ({rows} {shown}{more}, counting "
        "from 1); fix them in the source, or pass --skip-empty to leave those rows out",
        rows=first[:5],
    )


def plural(count: int, noun: str) -> str:
    """'1 row', '2 rows'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


EMPTY_SOURCE = "the source dataset is empty: there is nothing to embed"


def all_texts_bad(column: str) -> SourceError:
    return SourceError(f"every text in column {column!r} is null or empty: there is nothing to embed")
