"""Label each row of an embedded dataset with the nearest of a few labels (issue 16).

A row's label is the one whose embedding has the highest cosine with the row's vector. The
labels are embedded by the model the card records, with the model's classification prompt
where it has one (EmbeddingGemma's "Classification"), else as the dataset's search queries
are. The rows are scored a block at a time on the memory-mapped vectors: numpy only, memory
bounded by the block whatever the number of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .embedder import EmbedSettings
from .errors import ModelError, SourceError, UsageError
from .vectors import unit_rows

if TYPE_CHECKING:
    from .augment import Added
    from .embedder import Embedder
    from .loader import EmbeddedDataset

# Rows scored per step: 6 MiB of 384-d vectors, so the block is still in cache when its lengths
# are taken after the product (benchmarks/README.md, "Classify").
CHUNK_ROWS = 4096
DEFAULT_COLUMN = "label"


@dataclass
class Classification:
    """Each row's label (``label``: an index into ``labels``) and its cosine (``score``)."""

    labels: list[str]
    label: np.ndarray  # int64, one per row
    score: np.ndarray  # float32, one per row
    model: str
    prompt_name: str | None = None  # the model's prompt the labels were embedded with
    prompt: str | None = None  # or a literal prompt
    #: the dataset classified (after a publish to a folder: the folder as published)
    index: EmbeddedDataset | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.label)

    def counts(self) -> dict[str, int]:
        """Rows per label, in the order of ``labels`` (labels no row took count 0)."""
        found = np.bincount(self.label, minlength=len(self.labels))
        return {name: int(n) for name, n in zip(self.labels, found, strict=True)}

    def top(self, n: int) -> dict[str, np.ndarray]:
        """Each label's N rows of highest score: row numbers (0-based), best first."""
        order = np.lexsort((-self.score, self.label))  # by label, then by score, best first
        starts = np.searchsorted(self.label[order], np.arange(len(self.labels) + 1))
        return {
            name: order[starts[j] : min(starts[j] + n, starts[j + 1])] for j, name in enumerate(self.labels)
        }

    def names(self) -> list[str]:
        """Each row's label, by name."""
        return [self.labels[i] for i in self.label.tolist()]

    def record(self) -> dict[str, Any]:
        """What the card records under ``classification``."""
        return {
            "labels": self.labels,
            "model": self.model,
            "prompt_name": self.prompt_name,
            "prompt": self.prompt,
        }


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """LABELS as a list: a string is split at commas. Raises UsageError for no labels, a blank
    one, or two that differ only in case (a row could take either)."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    names = [str(item).strip() for item in items]
    if not any(names):
        raise UsageError('give at least one label, e.g. --labels "billing,enrollment,coverage"')
    blank = [i for i, name in enumerate(names, start=1) if not name]
    if blank:
        raise UsageError(f"label {blank[0]} of {len(names)} is empty: {', '.join(map(repr, names))}")
    seen: dict[str, str] = {}
    for name in names:
        key = " ".join(name.split()).casefold()
        if key in seen:
            raise UsageError(
                f"{seen[key]!r} and {name!r} are the same label (labels are compared ignoring case "
                "and spacing); give each once"
            )
        seen[key] = name
    return names


def classify(
    index: EmbeddedDataset, labels: str | Sequence[str], *, chunk_rows: int = CHUNK_ROWS
) -> Classification:
    """Each row of INDEX labelled with the nearest of LABELS by cosine (see the module's doc)."""
    names = parse_labels(labels)
    meta = index.metadata
    if not meta.get("model"):
        raise SourceError(
            f"{index.ref or 'the dataset'} is not a hubembed build: its card records no model to embed "
            "the labels with (build it with `hubembed build`)"
        )
    embedder, prompt_name, prompt = label_embedder(index)
    vectors = np.asarray(embedder.embed_batch(names), dtype=np.float32)
    matrix = index._matrix
    if vectors.shape[1] != matrix.shape[1]:
        raise ModelError(
            f"the labels embedded by {meta['model']!r} have {vectors.shape[1]} dimensions and the rows "
            f"{matrix.shape[1]}: the rows' vectors do not come from this model as it runs here"
        )
    label, score = nearest(matrix, vectors, chunk_rows=chunk_rows)
    model = index._model or meta["model"]
    return Classification(names, label, score, model, prompt_name, prompt, index=index)


def nearest(
    rows: np.ndarray, labels: np.ndarray, *, chunk_rows: int = CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ROWS (n x d, memory-mapped or not), the index of the most cosine-similar of
    LABELS (k x d) and that cosine; ties go to the first label, as argmax does."""
    units = unit_rows(labels)
    by_column = np.ascontiguousarray(units.T, dtype=np.float32)
    n = len(rows)
    best = np.empty(n, dtype=np.int64)
    score = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk_rows):
        block = np.asarray(rows[start : start + chunk_rows], dtype=np.float32)
        products = block @ by_column
        picked = products.argmax(axis=1)
        top = np.take_along_axis(products, picked[:, None], axis=1)[:, 0]
        # The row's length divides every label's product alike: the pick needs no division.
        lengths = np.sqrt(np.einsum("ij,ij->i", block, block))
        end = start + len(block)
        best[start:end] = picked
        np.divide(top, lengths, out=score[start:end], where=lengths > 0)
        score[start:end][lengths <= 0] = 0.0
    return best, score


def label_embedder(index: EmbeddedDataset) -> tuple[Embedder, str | None, str | None]:
    """The embedder for INDEX's labels, and the prompt name or literal prompt it uses.

    The model's classification prompt where it has one; else the query side, as a search of
    INDEX embeds its queries. The cached ONNX export is asked first, so a model already
    recorded is neither loaded nor imported (hubembed/query.py).
    """
    from .embedder import LocalEmbedder
    from .models import resolve_model
    from .query import cached_query_model

    meta = index.metadata
    settings = EmbedSettings(truncate_dim=meta.get("truncate_dim"), normalize=True)
    if index._device in ("auto", "cpu"):
        revision = meta.get("model_revision") if not index._model else None
        resolved = resolve_model(index._model or meta["model"], revision=revision, token=index._token)
        cached = cached_query_model(
            resolved.location, revision=resolved.revision, trust_remote_code=index._trust_remote_code
        )
        name = classification_prompt(cached.prompts) if cached is not None else None
        fast = cached.embedder(replace(settings, prompt_name=name)) if cached and name else None
        if fast is not None:
            return fast, name, None
    base = index._embedder
    if isinstance(base, LocalEmbedder):
        name = classification_prompt(base.model.prompts or {})
        if name is not None:
            return LocalEmbedder(base.model, replace(settings, prompt_name=name)), name, None
    used = getattr(base, "settings", None) or EmbedSettings()
    return base, used.prompt_name, used.prompt


def classification_prompt(prompts: dict[str, str | None]) -> str | None:
    """The name of the model's classification prompt ("Classification" first), if it has one."""
    named = [n for n in prompts if n.casefold() == "classification" and prompts[n]]
    return "Classification" if "Classification" in named else next(iter(named), None)


def publish(
    dst: str,
    labels: str | Sequence[str],
    *,
    column: str = DEFAULT_COLUMN,
    token: str | None = None,
    device: str = "auto",
) -> tuple[Classification, str]:
    """Classify DST's rows and add COLUMN (the label) and COLUMN_score to DST, in one commit (a
    Hub repo) or one swap (a folder), its card recording the classification. Returns the
    classification and the commit sha or path. DST is left as it was on any error."""
    from .augment import add_columns

    names = parse_labels(labels)
    if not column.strip():
        raise UsageError("--column must name a column")
    done: list[Classification] = []

    def columns(index: EmbeddedDataset) -> Added:
        drop = _replaceable(index, column)
        result = classify(index, names)
        done.append(result)
        return _added(result, column, drop)

    message = f"hubembed classify: {column} ({', '.join(names)})"
    where = add_columns(dst, columns, message=message, token=token, device=device)
    result = done[0]
    if Path(where).is_dir():  # the classified folder's files were swapped out: its rows as now published
        from .loader import load

        result.index = load(where, token=token, device=device)
    return result, where


def _replaceable(index: EmbeddedDataset, column: str) -> list[str]:
    """The columns a previous classification added (replaced by this one); refuses a COLUMN that
    would overwrite one of the rows' own columns."""
    from .augment import replaceable

    previous = index.metadata.get("classification") or {}
    ours = [c for c in (previous.get("column"), previous.get("score_column")) if c]
    wanted = [column, f"{column}_score"]
    return replaceable(index, wanted, ours, "; give the labels another column with --column NAME")


def _added(result: Classification, column: str, drop: list[str]) -> Added:
    import pyarrow as pa

    from .augment import Added

    names = pa.array(result.labels, type=pa.string()).take(pa.array(result.label))
    record = {**result.record(), "column": column, "score_column": f"{column}_score"}
    return Added(
        columns={column: names, f"{column}_score": pa.array(result.score, type=pa.float32())},
        record={"classification": record},
        drop=drop,
    )
