"""How many texts a model cuts short: counted with the model's own fast tokenizer, without
loading the model (the Rust `tokenizers` library, no torch).

A model reads at most ``max_seq_length`` tokens (special tokens and the prompt included) and
drops the rest without a word; the build counts those texts and says so, and the card
records it. Only texts long enough to possibly exceed the limit are tokenized: every token
covers at least one byte of text, so a text of fewer bytes than the limit (less a margin for
special tokens and the prompt) cannot exceed it. Short-text datasets tokenize nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelError

if TYPE_CHECKING:
    import pyarrow as pa

    from .embedder import EmbedSettings
    from .models import ResolvedModel

log = logging.getLogger("hubembed")

# Special tokens a model adds around a text ([CLS] ... [SEP], <s> ... </s>), with room to spare.
_SPECIALS = 8
_FILES = ("tokenizer.json", "sentence_bert_config.json", "config.json", "config_sentence_transformers.json")


class TruncationCounter:
    """Counts the texts longer than MAX_TOKENS once PROMPT is put before them."""

    def __init__(
        self, tokenizer: Any, max_tokens: int, prompt: str = "", positions: int | None = None
    ) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.prompt = prompt
        self.positions = positions  # the most tokens the model can read at all (its position limit)
        self._bound = max_tokens - _SPECIALS - len(prompt.encode("utf-8"))

    @classmethod
    def for_model(
        cls, resolved: ResolvedModel, settings: EmbedSettings, token: str | None = None
    ) -> TruncationCounter | None:
        """A counter for RESOLVED's tokenizer and limit, or None where they cannot be read
        without loading the model (then nothing is counted, and the card says so)."""
        try:
            model = model_tokenizer(resolved, settings, token)
        except ModelError as exc:
            log.debug("cannot count truncated texts: %s", exc)
            return None
        if model.max_seq_length is None:
            return None
        return cls(model.tokenizer, model.max_seq_length, model.prompt, model.positions)

    def count(self, texts: pa.ChunkedArray | pa.Array, keep: np.ndarray | None = None) -> int:
        """How many of TEXTS (where KEEP, a mask, is true) the model would cut short."""
        import pyarrow.compute as pc

        long = np.asarray(pc.binary_length(texts).to_numpy(zero_copy_only=False) > self._bound)
        if keep is not None:
            long &= keep
        if not long.any():
            return 0
        candidates = texts.filter(long).to_pylist()
        encoded = self.tokenizer.encode_batch([self.prompt + t for t in candidates])
        return sum(len(e.ids) > self.max_tokens for e in encoded)


@dataclass
class ModelTokenizer:
    """A model's fast tokenizer as the model runs it, and what the model reads, from its files:
    what the truncation count and the chunker need, without loading the model."""

    tokenizer: Any  # tokenizers.Tokenizer, its normalizer lowercasing where the model does
    max_seq_length: int | None  # --max-seq-length, else the model's own limit; None: unknown
    positions: int | None  # the most tokens the model can read at all (its position limit)
    prompt: str  # put before every text


def model_tokenizer(
    resolved: ResolvedModel, settings: EmbedSettings, token: str | None = None
) -> ModelTokenizer:
    """RESOLVED's fast tokenizer, limits and prompt for SETTINGS. Raises ModelError where its
    tokenizer.json cannot be read (a model with a slow tokenizer only, or out of reach)."""
    folder = _files(resolved, token)
    try:
        if folder is None:
            raise FileNotFoundError("no tokenizer.json")
        from tokenizers import Tokenizer
        from tokenizers.normalizers import Lowercase, Sequence

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        st_config, config, model_config = (
            json.loads((folder / name).read_text(encoding="utf-8")) if (folder / name).is_file() else {}
            for name in _FILES[1:]
        )
    except Exception as exc:
        raise ModelError(
            f"the fast tokenizer (tokenizer.json) of model {resolved.model_id!r} cannot be read: {exc}"
        ) from exc
    if st_config.get("do_lower_case"):
        # As sentence-transformers does: lowercase before the tokenizer's own normalizer.
        normalizer = tokenizer.normalizer
        tokenizer.normalizer = Sequence([Lowercase(), normalizer] if normalizer else [Lowercase()])
    limit = settings.seq_length or st_config.get("max_seq_length")
    positions = config.get("max_position_embeddings")
    prompts = model_config.get("prompts") or {}
    prompt = settings.prompt or (prompts.get(settings.prompt_name) if settings.prompt_name else "") or ""
    return ModelTokenizer(
        tokenizer,
        limit if isinstance(limit, int) and limit >= 1 else None,
        positions if isinstance(positions, int) else None,
        prompt,
    )


def _files(resolved: ResolvedModel, token: str | None) -> Path | None:
    """The folder holding the model's tokenizer and sentence-transformers config: its own
    folder, or those few small files fetched from the Hub (or the HF cache)."""
    location = Path(resolved.location)
    if location.is_dir():
        return location if (location / "tokenizer.json").is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        paths = [
            hf_hub_download(
                resolved.model_id,
                name,
                revision=resolved.revision,
                token=token,
                local_files_only=resolved.origin == "hub-cache",
            )
            for name in _FILES[:3]
        ]
    except Exception as exc:  # no tokenizer.json (a slow tokenizer only), gated, offline
        log.debug("cannot count truncated texts for %s: %s", resolved.model_id, exc)
        return None
    with contextlib.suppress(Exception):  # the prompts, where the model has any
        hf_hub_download(
            resolved.model_id,
            _FILES[3],
            revision=resolved.revision,
            token=token,
            local_files_only=resolved.origin == "hub-cache",
        )
    return Path(paths[0]).parent
