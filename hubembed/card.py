"""The dataset card: YAML that `datasets` reads (configs, dataset_info) plus what hubembed
records about how the vectors were made, under the `hubembed` key.

That record is the contract between a build and what reads it later (a refresh, the loader):
``BuildRecord`` is its type. The loader hands it on as a plain dict (``metadata``), the same
keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

METADATA_KEY = "hubembed"
# Settings that change the vectors: a change in any of them means re-embedding everything.
# "precision" counts only as int8 (settings_fingerprint), absent before it existed, "seq_length" (--max-seq-length) where the model's
# own limit applies, "pooling" where each row has its own vector: cards written before they
# existed still match.
FINGERPRINT_KEYS = (
    "model",
    "model_revision",
    "prompt_name",
    "prompt",
    "truncate_dim",
    "normalize",
    "precision",
    "seq_length",
    "pooling",
)
# Keys left out of the card when None: they were added later, and cards without them mean None.
_OMIT_NONE = ("backend", "precision", "seq_length", "chunking", "pooling", "map", "quantization", "index")


@dataclass
class BuildRecord:
    """How an embedded dataset was made, as its card records it."""

    model: str
    model_revision: str | None = None
    model_origin: str | None = None
    prompt_name: str | None = None
    prompt: str | None = None
    truncate_dim: int | None = None
    normalize: bool = True
    seq_length: int | None = None  # --max-seq-length, where given
    trust_remote_code: bool = False
    #: the local runtime that ran (torch, fast-torch, onnx, onnx-int8); None when remote
    backend: str | None = None
    precision: str | None = None  # fp32, fp16, bf16 or int8; None: fp32 (older cards), or remote
    query_prompt_name: str | None = None
    query_prompt: str | None = None
    normalized: bool = True  # every vector has unit length (to 1e-3)
    dimension: int = 0
    rows: int = 0
    skipped_rows: int = 0
    max_seq_length: int | None = None  # tokens the model reads; None where not known
    truncated_texts: int | None = None  # texts longer than that, cut short; None: not counted
    #: {"tokens", "overlap", "pool"} for a build made with --chunk; None otherwise
    chunking: dict[str, Any] | None = None
    #: what the vectors of a pooled build depend on beyond the model: "mean/TOKENS/OVERLAP"
    pooling: str | None = None
    #: the 2-D map (hubembed/maps.py): its columns, picture and how it was made; None: no map
    map: dict[str, Any] | None = None
    #: --quantize: {"kinds", "columns", "int8_ranges": {"min", "max", "calibration_rows"}}
    quantization: dict[str, Any] | None = None
    #: --index: the ANN index's file, library, parameters, and the rows it covers (hubembed/ann.py)
    index: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)  # SourceInfo.to_dict()
    layout: str = "default"
    embedding_column: str = "embedding"
    hash_column: str | None = None
    engine: str = "local"
    hubembed_version: str = ""
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in _OMIT_NONE:
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> BuildRecord | None:
        """The record of a card's metadata; None for a card without one. Unknown keys (from a
        newer hubembed) are ignored, missing ones take their defaults."""
        if not meta or "model" not in meta:
            return None
        known = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in meta.items() if k in known})
        record.skipped_rows = record.skipped_rows or 0
        return record

    def fingerprint(self) -> str:
        """A stable id of the settings that change the vectors."""
        return settings_fingerprint(asdict(self))


def settings_fingerprint(meta: dict[str, Any]) -> str:
    """A stable id of the embedding settings in META (a card's metadata, or a part of it)."""
    data = {k: meta.get(k) for k in FINGERPRINT_KEYS}
    # int8 is another set of vectors. fp16/bf16 are fp32's to rounding (the fast torch path keeps
    # them only above cosine 0.999 on the calibration texts, MiniLM gives 0.99999): a refresh on
    # a CPU after a build on a GPU reuses the vectors, as cards without "precision" (fp32) do.
    data["precision"] = "int8" if data["precision"] == "int8" else None
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def render_card(
    record: BuildRecord,
    *,
    data_files: str,
    features: datasets.Features | None,
    num_bytes: int,
    dst: str,
) -> str:
    """A README.md whose YAML keeps `configs` and `dataset_info` consistent with the files.

    Both are written from scratch on every build: a stale `dataset_info.features` breaks
    `load_dataset` with a CastError (datasets#8608), a missing `configs` loses the layout.
    """
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from huggingface_hub import DatasetCardData

    split = record.source["split"]
    card_data = DatasetCardData()
    if features is not None:
        splits = SplitDict({split: SplitInfo(split, num_bytes=num_bytes, num_examples=record.rows)})
        DatasetInfosDict({"default": DatasetInfo(features=features, splits=splits)}).to_dataset_card_data(
            card_data
        )
    card_data["configs"] = [{"config_name": "default", "data_files": [{"split": split, "path": data_files}]}]
    card_data["tags"] = ["embeddings", "hubembed"]
    # What the Hub indexes and shows: where the rows came from, what they are for, how many.
    src = record.source
    card_data["pretty_name"] = f"Embeddings of {_source_name(src)}"
    if src.get("kind") == "hub":
        card_data["source_datasets"] = [f"extended|{src['id']}"]
    card_data["task_categories"] = ["feature-extraction", "sentence-similarity"]
    card_data["size_categories"] = [size_category(record.rows)]
    card_data[METADATA_KEY] = record.to_dict()
    return f"---\n{card_data.to_yaml()}\n---\n{_body(record, dst)}"


def truncation_note(truncated: int | None, rows: int, limit: int | None) -> str:
    """ "312 of 10,000 texts were longer than 256 tokens and were truncated", or why not known."""
    if truncated is None or limit is None:
        return "not counted (the model's tokenizer was not at hand)"
    noun, verb = ("text" if rows == 1 else "texts"), ("was" if truncated == 1 else "were")
    return f"{truncated:,} of {rows:,} {noun} {verb} longer than {limit} tokens and {verb} truncated"


def size_category(rows: int) -> str:
    """The Hub's size_categories bucket for ROWS: n<1K, 1K<n<10K, ... n>1T."""
    names = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    if rows < 1000:
        return "n<1K"
    for i, upper in enumerate(names[1:], start=1):
        if rows < 1000 * 10**i:
            return f"{names[i - 1]}<n<{upper}"
    return "n>1T"


def _source_name(src: dict[str, Any]) -> str:
    # A local source by its file or folder name: its full path says nothing on the Hub.
    name = str(src.get("id", ""))
    return name if src.get("kind") == "hub" else name.rstrip("/").rsplit("/", 1)[-1]


def _body(record: BuildRecord, dst: str) -> str:
    src = record.source
    prompt = record.prompt_name or record.prompt or "none"
    skipped = f" ({record.skipped_rows} empty rows skipped)" if record.skipped_rows else ""
    rows = [
        ("Model", f"`{record.model}` (revision `{record.model_revision or 'n/a'}`)"),
        ("Dimension", str(record.dimension)),
        ("Normalised", "yes" if record.normalized else "no"),
        ("Prompt", f"`{prompt}`"),
        ("Matryoshka truncate_dim", str(record.truncate_dim or "none")),
        ("Source", f"`{src['id']}` @ `{src['revision']}`"),
        ("Config / split / column", f"{src['config'] or 'default'} / {src['split']} / `{src['column']}`"),
        ("Rows", f"{record.rows}{skipped}"),
        ("Truncated", truncation_note(record.truncated_texts, record.rows, record.max_seq_length)),
        (
            "Built with",
            f"hubembed {record.hubembed_version} ({record.engine} engine) on {record.created_at}",
        ),
    ]
    if record.precision == "int8":
        rows.insert(5, ("Precision", "int8 (`--backend onnx-int8`): within cosine 0.999 of fp32"))
    elif record.backend:
        rows.insert(5, ("Backend", f"{record.backend}, {record.precision or 'fp32'}"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    picture = _map_section(record.map, record.rows) if record.map else ""
    query = "How can Medicare help me?" if "medicare" in src["id"].lower() else "your question"
    return f"""
# Embeddings of `{src["id"]}`

Each row of `{src["id"]}` with an `{record.embedding_column}` column added by hubembed.

| | |
|---|---|
{table}
{picture}
## Use

```python
from datasets import load_dataset

ds = load_dataset("{dst}", split="{src["split"]}")
```

```python
import hubembed

index = hubembed.load("{dst}")
for hit in index.search("{query}", top_k=5):
    print(hit["score"], hit["row"])
```
"""


def _map_section(made: dict[str, Any], rows: int) -> str:
    from .mapplot import POINT_LABELS

    x, y = made.get("columns") or ("map_x", "map_y")
    if made.get("method") == "pca":
        how = "the vectors' two principal axes"
    else:
        how = f"UMAP fitted on {made.get('fitted_rows') or 0:,} rows, the others placed by their nearest ones"
    labels = (
        "Each point is labelled with its text."
        if rows <= POINT_LABELS
        else "Regions are labelled by the words most telling of their texts."
    )
    return f"""
## Map

![map]({made.get("image", "map.png")})

Each row at (`{x}`, `{y}`): rows with similar vectors lie close together ({how}). {labels}
"""


def read_metadata(readme: str) -> dict[str, Any]:
    """The `hubembed` block of a card, or {} when the card has none."""
    import yaml

    if not readme.startswith("---"):
        return {}
    _, _, rest = readme.partition("---")
    front, sep, _ = rest.partition("\n---")
    if not sep:
        return {}
    data = yaml.safe_load(front) or {}
    meta = data.get(METADATA_KEY) if isinstance(data, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}
