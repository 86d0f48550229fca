"""Add columns to an embedded dataset already published: DST's shards rewritten with them and
its card updated, in one commit (a Hub repo) or one swap (a local folder), as a build is.

What the new columns hold is computed from DST as loaded at the commit the push is made on
top of, so a change pushed meanwhile fails the push instead of being overwritten. The shards
are read and written a row group at a time: memory stays bounded whatever their size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import config
from .card import METADATA_KEY, BuildRecord, read_metadata, render_card
from .errors import DestinationError
from .output import ShardWriter
from .sink import open_sink
from .vectors import write_published

if TYPE_CHECKING:
    import pyarrow as pa

    from .loader import EmbeddedDataset


@dataclass
class Added:
    """Columns to add, one value per row in the rows' order (pyarrow arrays; a column of that
    name already there is replaced), keys to set in the card's hubembed record, columns to
    remove, and files to publish beside the shards (path in DST -> content)."""

    columns: dict[str, pa.Array]
    record: dict[str, Any] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)


def add_columns(
    dst: str,
    compute: Callable[[EmbeddedDataset], Added],
    *,
    message: str,
    token: str | None = None,
    device: str = "auto",
) -> str:
    """Load DST, call COMPUTE on it, and publish DST with what it returns. Returns the commit
    sha (a Hub repo) or the path (a folder). DST is left as it was on any error."""
    from .loader import load

    token = token if token is not None else config.hf_token()
    sink = open_sink(dst, token=token, private=False)
    sink.preflight()
    meta = read_metadata(sink.existing_card() or "")
    record = BuildRecord.from_dict(meta)
    if record is None:
        raise DestinationError(f"{dst} holds no hubembed build to add columns to; build it first")
    if meta.get("layout") == "blog":
        raise DestinationError(
            f"{dst} is a --layout blog build, which stores only the vectors; columns can be added to "
            "a build of the default layout"
        )
    index = load(sink.ref, sink.revision, token=token, device=device)
    files = index.shard_files
    if not files:
        raise DestinationError(f"{dst} has no parquet shards to add columns to")
    added = compute(index)
    staged = sink.staging()
    try:
        write_added(staged, files, added, meta, record, sink.ref)
        return sink.publish(staged, message)
    except BaseException:
        sink.discard(staged)  # as a build does: nothing staged is left behind, DST as it was
        raise


def replaceable(index: EmbeddedDataset, wanted: Sequence[str], ours: Sequence[str], fix: str) -> list[str]:
    """Of OURS, the columns an earlier run of the same step added, those INDEX has (to drop and
    write anew); refuses WANTED columns that are the rows' own, the message ending with FIX."""
    present = set(index._column_names)
    taken = [c for c in wanted if c in present and c not in ours]
    if taken:
        raise DestinationError(f"{index.ref} already has a {taken[0]!r} column of its own{fix}")
    return [c for c in ours if c in present]


def write_added(
    staged: Path, files: list[Path], added: Added, meta: dict, record: BuildRecord, dst: str
) -> None:
    """Write FILES' rows with ADDED into STAGED (its shards, files and card); FILES must not be
    under STAGED/data, which this writes. DST is how the card refers to the dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Features

    old = pq.read_schema(files[0])
    gone = {*added.drop, *added.columns}
    fields = [f for f in old if f.name not in gone]
    fields += [pa.field(name, values.type) for name, values in added.columns.items()]
    # The old schema's metadata keeps the features of the columns kept (the vectors' fixed length).
    features = Features.from_arrow_schema(pa.schema(fields, metadata=old.metadata))
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    wrong = [name for name, values in added.columns.items() if len(values) != rows]
    if wrong:
        raise ValueError(f"column {wrong[0]!r} has {len(added.columns[wrong[0]])} values for {rows} rows")
    split = record.source["split"]
    writer = ShardWriter(staged, split, features.arrow_schema)
    offset = 0
    try:
        for path in files:
            shard = pq.ParquetFile(path, memory_map=True)
            for group in range(shard.num_row_groups):
                table = shard.read_row_group(group)
                table = table.drop_columns([c for c in gone if c in table.column_names])
                for name, values in added.columns.items():
                    table = table.append_column(name, values.slice(offset, table.num_rows))
                offset += table.num_rows
                writer.write(table)
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    write_published(shards, config.EMBEDDING_COLUMN, staged)  # as a build does: same vectors
    for name, content in added.files.items():
        (staged / name).write_bytes(content)
    # The card's text from the record as it will be (a map added shows in it).
    record = BuildRecord.from_dict({**meta, **added.record}) or record
    readme = render_card(
        record, data_files=f"data/{split}-*", features=features, num_bytes=writer.num_bytes, dst=dst
    )
    (staged / "README.md").write_text(_with_record(readme, {**meta, **added.record}), encoding="utf-8")


def _with_record(readme: str, meta: dict[str, Any]) -> str:
    """README with META as its hubembed record: the card's own record, keys BuildRecord does not
    know included (render_card writes only those it knows)."""
    from huggingface_hub import DatasetCard

    card = DatasetCard(readme)
    card.data[METADATA_KEY] = meta
    return str(card)
