"""Long texts split into chunks the model reads whole (``hubembed build --chunk TOKENS``).

A chunk of at most TOKENS tokens is one the model reads whole: ``prompt + chunk``, special
tokens ([CLS]/[SEP]) included, is at most TOKENS tokens, counted by the model's own fast
tokenizer (its ``tokenizer.json``, through the Rust ``tokenizers`` package; no torch).

How: each text is tokenized once; its token offsets give every place a chunk may end, ranked
paragraph break > sentence end > line break > whitespace > between two pre-tokens (CJK
characters, punctuation) > inside a word. A chunk starting at token I ends at the best-ranked
place within its budget (the last one of that rank), but no sooner than half the budget (a
quarter for a paragraph break: a paragraph shorter than that, a heading, goes with what
follows) and past the overlap, so that no chunk is cut needlessly short; inside a word only
where nothing else is. The next chunk starts OVERLAP tokens back, at the first word start
there (at most OVERLAP tokens of overlap). Then every chunk is counted exactly, as the model
will see it, in one batch (``encode_batch(prompt + chunk)``); a text with a chunk over the
budget (a tokenizer whose count changes where a word is cut, or a prompt that merges with the
text) is split again one chunk at a time, each counted and shrunk until it fits.

Offsets are ``[start, end)`` character offsets into the Python str, in order. A text that
fits gives ``[(0, len(text))]``: the chunk is the text itself, so a build with --chunk over
short texts embeds exactly the strings it embeds without. A text split in several gives
chunks stripped of surrounding whitespace (never empty or blank); the whitespace between two
chunks is all they leave out, so they cover every non-blank character. A blank text gives
``[]``.

The only chunks over the limit: one token of the text that alone, read after the prompt,
takes more than the 1 or 2 tokens a tiny TOKENS leaves for text ("##dis" of a long word reads
as "di ##s"); nothing shorter exists, so it is kept (random texts, 4,000 of them: none at 3
tokens of text or more).

Why ours and not semchunk 4.1.1 (which also splits token-exact, with offsets, given a token
counter), measured by ``benchmarks/chunk.py`` (benchmarks/README.md, "Chunking (issue 15)"):
all-MiniLM-L6-v2, chunks of 256 tokens, semchunk counting exactly what the model reads, on a
2-core VM shared with other jobs (load average 1.5-2.5), one run each:

- speed: 1,000 documents of ~5,000 words (6.4M tokens): 10.5 s (17.5 CPU s: the tokenizer's
  own threads) against 27.4 s; 100,000 short texts that need no split: 2.1 s against 6.2 s.
  Both are small beside embedding the chunks (about 1,080 s for ours, extrapolated from 192
  chunks through ``encode``, CPU, batch 32): 1.0%, and 0.7% for the short texts;
- fewer chunks, so less to embed: 32,448 against 35,829 (+10%: about 110 s more embedding,
  ten times the chunking time); 3.6% of semchunk's chunks of split texts are under a quarter
  full (0.1% of ours). With an overlap of 32 tokens semchunk cuts every chunk into pieces of
  at most the overlap and joins them, so its chunks are 159 tokens on average (at most 215 of
  256) and 16% of them end at a paragraph (79% of ours): 13,858 chunks against 11,032 (+26%);
- exactness: the same (no chunk over 256 of either; none over 64 either in the edge cases:
  10,000 CJK characters, emoji, CRLF paragraphs, words joined without spaces, with a prompt
  and with overlap). Both need the tokenizer's truncation off: all-MiniLM-L6-v2's
  tokenizer.json truncates and pads to 128, and semchunk given it as it is counts every text
  as 128 tokens and returns each 5,000-word document as one chunk of ~7,000 tokens;
- boundaries: chunks end at a paragraph break 78.7% (semchunk 81.6%), at a sentence end the
  rest (21.3%, semchunk 18.4%), inside a word never, for both;
- no new dependency, and no unbounded cache: semchunk memoizes its counter by default, 100,702
  strings after the 1,000 documents.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelError

if TYPE_CHECKING:
    from .embedder import EmbedSettings
    from .models import ResolvedModel

# Where a chunk may end, as the character where the next one starts (after the whitespace).
_PARAGRAPH = re.compile(r"(?:\n[^\S\n]*\n|\r[^\S\r\n]*\r)\s*")
_SENTENCE = re.compile(
    r"[.!?\u2026]+[\"'\u201d\u2019\u00bb)\]]*\s+|[\u3002\uff01\uff1f]+[\u300d\u300f\u201d\u2019\uff09]*\s*"
)
_LINE = re.compile(r"[\r\n]\s*")
# The shortest chunk, as a share of the budget, that may end at each rank of boundary: a
# paragraph break ends a chunk a quarter full (a short paragraph, a heading, goes with the
# next), the others one half full.
_SHORTEST = (0.25, 0.5, 0.5, 0.5, 0.5)
# Characters of text tokenized at once by split_many (its tokens take ~100 bytes each).
_GROUP_CHARS = 2_000_000
# What str.isspace() calls whitespace, as code points.
_SPACES = np.array(
    [*range(9, 14), *range(0x1C, 0x21), 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B)]
    + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000],
    dtype=np.uint32,
)


class Chunker:
    """Splits texts into chunks of at most MAX_TOKENS tokens (prompt and special tokens
    included), consecutive chunks sharing at most OVERLAP tokens.

    TOKENIZER is a ``tokenizers.Tokenizer`` (its truncation and padding are turned off here).
    Raises ValueError where MAX_TOKENS leaves no room for text after the special tokens and
    PROMPT, or OVERLAP is negative or leaves no room for new text in each chunk.
    """

    #: the model's own limit (max_seq_length), where known: for the caller's checks
    model_max_length: int | None = None

    def __init__(self, tokenizer: Any, max_tokens: int, overlap: int = 0, prompt: str = "") -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.prompt = prompt
        self._specials = len(tokenizer.encode("").ids)
        self._prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False).ids) if prompt else 0
        fixed = self._specials + self._prompt_tokens
        #: tokens of text a chunk holds (the text's own tokenization)
        self.budget = max_tokens - fixed
        if self.budget < 1:
            what = f"the model's {self._specials} special tokens" + (
                f" and the prompt's {self._prompt_tokens} tokens" if prompt else ""
            )
            raise ValueError(
                f"chunks of {max_tokens} tokens leave no room for text: {what} take {fixed}; "
                f"give at least {fixed + 1}"
            )
        if overlap < 0 or overlap >= self.budget:
            raise ValueError(
                f"an overlap of {overlap} tokens does not fit chunks of {max_tokens} tokens: give 0 to "
                f"{self.budget - 1} (the chunk's {self.budget} tokens of text, less at least one new one)"
            )

    @classmethod
    def for_model(
        cls,
        resolved: ResolvedModel,
        settings: EmbedSettings,
        max_tokens: int,
        overlap: int = 0,
        token: str | None = None,
    ) -> Chunker:
        """A chunker with RESOLVED's fast tokenizer and the prompt SETTINGS give.
        Raises ModelError where that tokenizer cannot be read (a model with a slow tokenizer only,
        or unreachable), ValueError as the constructor does."""
        from .tokens import model_tokenizer

        try:
            model = model_tokenizer(resolved, settings, token)
        except ModelError as exc:
            raise ModelError(f"cannot chunk: {exc}; chunking counts tokens with it") from exc
        chunker = cls(model.tokenizer, max_tokens, overlap, model.prompt)
        chunker.model_max_length = model.max_seq_length
        return chunker

    def split(self, text: str) -> list[tuple[int, int]]:
        """TEXT's chunks, as [start, end) character offsets (see the module's docstring)."""
        return self.split_many([text])[0]

    def split_many(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """The chunks of each of TEXTS (as split() gives them), tokenized in batches."""
        out: list[list[tuple[int, int]]] = []
        group: list[str] = []
        size = 0
        for text in texts:  # a batch's tokens take memory: a few MB of text at a time
            if group and size + len(text) > _GROUP_CHARS:
                out += self._split_group(group)
                group, size = [], 0
            group.append(text)
            size += len(text)
        return out + self._split_group(group) if group else out

    def _split_group(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        fixed = self._specials + self._prompt_tokens
        out: list[list[tuple[int, int]]] = []
        check: list[tuple[int, int, int]] = []  # (text, start, end) to count exactly
        for k, (text, encoding) in enumerate(zip(texts, encodings, strict=True)):
            if not text or text.isspace():
                out.append([])
            elif len(encoding.ids) + fixed <= self.max_tokens:
                out.append([(0, len(text))])
                if self.prompt:  # the prompt may tokenize differently before the text
                    check.append((k, 0, len(text)))
            else:
                spans = _Text(text, encoding).plan(self.budget, self.overlap)
                out.append(spans)
                check += [(k, start, end) for start, end in spans]
        if check:
            counts = self.tokens([texts[k][start:end] for k, start, end in check])
            redo = sorted({k for (k, _, _), n in zip(check, counts, strict=True) if n > self.max_tokens})
            for k in redo:
                out[k] = _Text(texts[k], encodings[k]).plan(self.budget, self.overlap, self._fits)
        return out

    def tokens(self, chunks: list[str]) -> list[int]:
        """How many tokens the model reads for each of CHUNKS: the prompt and special tokens
        included, nothing cut."""
        return [len(e.ids) for e in self.tokenizer.encode_batch([self.prompt + c for c in chunks])]

    def _fits(self, chunk: str) -> int:
        """How many tokens CHUNK is over the budget (0 or less: it fits)."""
        return self.tokens([chunk])[0] - self.max_tokens


class _Text:
    """One text to split: its tokens' offsets and, for each rank of boundary, the token
    indices T (1 <= T < N) a chunk may end before."""

    def __init__(self, text: str, encoding: Any) -> None:
        self.text = text
        offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        self.starts = offsets[:, 0]
        self.ends = offsets[:, 1]
        self.n = n = len(offsets)
        starts, ends = self.starts, self.ends
        # A cut between two tokens of one character (a byte-level tokenizer's pieces of an emoji)
        # would split the character: never there.
        valid = np.zeros(n + 1, dtype=bool)
        valid[1:n] = (starts[1:] >= ends[:-1]) & (starts[1:] > 0)
        self.all_valid = bool(valid[1:n].all())
        self.valid: list[int] = [] if self.all_valid else np.flatnonzero(valid).tolist()
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        space = np.append(np.isin(codes, _SPACES), False)
        # whitespace before the token, or the token's own first character (Metaspace's "▁word")
        after_space = valid[1:n] & (space[starts[1:] - 1] | space[starts[1:]])
        words = np.asarray(encoding.word_ids, dtype=float)  # None (no word) becomes nan: a boundary
        new_word = valid[1:n] & ~(words[1:] == words[:-1])
        self.ranks = [
            self._at(_PARAGRAPH, valid),
            self._at(_SENTENCE, valid),
            self._at(_LINE, valid),
            (np.flatnonzero(after_space) + 1).tolist(),
            (np.flatnonzero(new_word) + 1).tolist(),
        ]

    def _at(self, pattern: re.Pattern[str], valid: np.ndarray) -> list[int]:
        """The tokens the matches of PATTERN end before (each match's end is where a chunk starts)."""
        where = np.fromiter((m.end() for m in pattern.finditer(self.text)), dtype=np.int64)
        tokens = np.searchsorted(self.ends, where, side="right")  # the first token ending past it
        return tokens[valid[np.minimum(tokens, self.n)]].tolist()

    def plan(
        self, budget: int, overlap: int, excess: Callable[[str], int] | None = None
    ) -> list[tuple[int, int]]:
        """The chunks, as character offsets. With EXCESS (how many tokens a chunk's text is
        over the limit), each chunk is counted as it is made, and made shorter until it fits."""
        spans: list[tuple[int, int]] = []
        i = done = 0  # the chunk's first token; the first token no chunk has yet
        while done < self.n:
            size = budget
            while True:
                if i + size <= done:  # shorter than the overlap: start later, with less of it
                    i = self._start_at_or_after(done + 1 - size, done)
                t = self._end(i, done, size, overlap)
                start, end = self._chars(i, t)
                if excess is None or t - i <= 1 or end <= start:
                    break
                over = excess(self.text[start:end])
                if over <= 0:
                    break
                if size == 1:  # one token over the limit on its own: nothing shorter to give
                    break
                size = max(1, min(size, t - i) - over)
            if end > start:
                spans.append((start, end))
            i, done = self._next_start(i, t, overlap), t
        return spans

    def _end(self, i: int, done: int, size: int, overlap: int) -> int:
        """Where a chunk starting at token I, of at most SIZE tokens, ends (exclusive): past
        DONE, the first token no chunk has yet."""
        last = i + size
        if last >= self.n:
            return self.n
        least = max(done + 1, i + min(size, overlap + 1))
        for rank, share in zip(self.ranks, _SHORTEST, strict=True):
            k = bisect_right(rank, last) - 1
            if k >= 0 and rank[k] >= max(least, i + int(size * share)):
                return rank[k]
        for rank in self.ranks[3:]:  # a short chunk rather than a word cut, where a word ends at all
            k = bisect_right(rank, last) - 1
            if k >= 0 and rank[k] > done:
                return rank[k]
        if self.all_valid:
            return max(last, done + 1)
        k = bisect_right(self.valid, last) - 1
        if k >= 0 and self.valid[k] > done:
            return self.valid[k]
        k = bisect_right(self.valid, done)
        return self.valid[k] if k < len(self.valid) else self.n

    def _next_start(self, i: int, t: int, overlap: int) -> int:
        """Where the chunk after the one of tokens [I, T) starts: at most OVERLAP tokens before T,
        at the first word start there. Where the last OVERLAP tokens hold no word start, there
        is no overlap, unless the chunk has no whitespace at all (CJK): then the first start of
        a pre-token (a character), or of a token."""
        if overlap <= 0:
            return t
        low = max(t - overlap, i + 1)
        spaces, words = self.ranks[3], self.ranks[4]
        k = bisect_left(spaces, low)
        if k < len(spaces) and spaces[k] < t:
            return spaces[k]
        if k > 0 and spaces[k - 1] > i:  # the chunk has words, none starting late enough
            return t
        k = bisect_left(words, low)
        if k < len(words) and words[k] < t:
            return words[k]
        if self.all_valid:
            return low
        k = bisect_left(self.valid, low)
        return self.valid[k] if k < len(self.valid) and self.valid[k] < t else t

    def _start_at_or_after(self, i: int, done: int) -> int:
        """The first token at or after I (and at most DONE) a chunk may start at."""
        if self.all_valid:
            return i
        k = bisect_left(self.valid, i)
        return min(self.valid[k], done) if k < len(self.valid) else done

    def _chars(self, i: int, t: int) -> tuple[int, int]:
        """Tokens [I, T) as character offsets, whitespace stripped; characters between two tokens
        that give no token (control characters, zero-width spaces) go with the chunk before."""
        text = self.text
        if i == 0:
            start = len(text) - len(text.lstrip())
        else:
            start = int(self.starts[i])
            while start < len(text) and text[start].isspace():
                start += 1
        if t >= self.n:
            end = len(text.rstrip())
        else:
            a, b = int(self.ends[t - 1]), int(self.starts[t])
            end = a + len(text[a:b].rstrip())
            while end > start and text[end - 1].isspace():
                end -= 1
        return start, end
