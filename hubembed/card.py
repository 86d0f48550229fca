"""The dataset card: YAML that `datasets` reads (configs, dataset_info) plus what hubembed
records about how the vectors were made, under the `hubembed` key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

METADATA_KEY = "hubembed"


def render_card(
    meta: dict[str, Any],
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

    split = meta["source"]["split"]
    card_data = DatasetCardData()
    if features is not None:
        splits = SplitDict({split: SplitInfo(split, num_bytes=num_bytes, num_examples=meta["rows"])})
        DatasetInfosDict({"default": DatasetInfo(features=features, splits=splits)}).to_dataset_card_data(
            card_data
        )
    card_data["configs"] = [{"config_name": "default", "data_files": [{"split": split, "path": data_files}]}]
    card_data["tags"] = ["embeddings", "hubembed"]
    card_data[METADATA_KEY] = meta
    return f"---\n{card_data.to_yaml()}\n---\n{_body(meta, dst)}"


def _body(meta: dict[str, Any], dst: str) -> str:
    src = meta["source"]
    prompt = meta.get("prompt_name") or meta.get("prompt") or "none"
    rows = [
        ("Model", f"`{meta['model']}` (revision `{meta.get('model_revision') or 'n/a'}`)"),
        ("Dimension", str(meta["dimension"])),
        ("Normalised", "yes" if meta["normalized"] else "no"),
        ("Prompt", f"`{prompt}`"),
        ("Matryoshka truncate_dim", str(meta.get("truncate_dim") or "none")),
        ("Source", f"`{src['id']}` @ `{src['revision']}`"),
        ("Config / split / column", f"{src['config'] or 'default'} / {src['split']} / `{src['column']}`"),
        (
            "Rows",
            f"{meta['rows']}"
            + (f" ({meta['skipped_rows']} empty rows skipped)" * bool(meta["skipped_rows"])),
        ),
        (
            "Built with",
            f"hubembed {meta['hubembed_version']} ({meta['engine']} engine) on {meta['created_at']}",
        ),
    ]
    if meta.get("precision") == "int8":
        rows.insert(5, ("Precision", "int8 (`--backend onnx-int8`): within cosine 0.999 of fp32"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    query = "How can Medicare help me?" if "medicare" in src["id"].lower() else "your question"
    return f"""
# Embeddings of `{src["id"]}`

Each row of `{src["id"]}` with an `{meta["embedding_column"]}` column added by
[hubembed](https://github.com/hubembed/hubembed).

| | |
|---|---|
{table}

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
