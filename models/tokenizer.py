"""CLIP's byte-pair tokenizer without torch: the same ids as open_clip's ``SimpleTokenizer``.

open_clip's tokenizer module imports torch at its top, which costs a query 3 s before any
work. This is the same algorithm (OpenAI CLIP's, MIT licence) on the same vocabulary file,
returning numpy rows; ``tests/test_tokenizer.py`` checks it id for id against open_clip's on
texts with unicode, emoji, HTML entities and texts longer than the context. Only the
deterministic cleanings are here (lower, whitespace, canonicalize); open_clip's random
"reduction masks" are for training and stay on the torch runtime.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import itertools
import string
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLEANINGS = ("lower", "whitespace", "canonicalize")
_MERGES = 49152 - 256 - 2  # merges open_clip reads from the vocabulary file
_SPECIAL = ("<start_of_text>", "<end_of_text>")


def open_clip_vocab() -> Path:
    """The vocabulary file open_clip ships, found without importing open_clip (which imports torch)."""
    found = importlib.util.find_spec("open_clip")
    locations = list(found.submodule_search_locations or []) if found else []
    for folder in locations:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"open_clip's {VOCAB_FILE} is not installed; reinstall open_clip_torch")


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """A reversible map from bytes to printable unicode characters (CLIP's)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _basic_clean(text: str) -> str:
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _whitespace_clean(text: str) -> str:
    return " ".join(text.split()).strip()


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _clean(text: str, cleaning: str) -> str:
    text = _basic_clean(text)
    if cleaning == "canonicalize":
        return " ".join(text.replace("_", " ").translate(_PUNCTUATION).lower().split()).strip()
    text = _whitespace_clean(text)
    return text.lower() if cleaning == "lower" else text


class ClipTokenizer:
    """Texts to rows of token ids: start, byte-pair tokens, end, zero padding; cut at the context."""

    def __init__(
        self,
        vocab: Path | None = None,
        context_length: int = 77,
        cleaning: str = "lower",
        extra_special: tuple[str, ...] = (),
    ) -> None:
        if cleaning not in CLEANINGS:
            raise ValueError(f"cleaning must be one of {', '.join(CLEANINGS)}, not {cleaning!r}")
        self.context_length = context_length
        self.cleaning = cleaning
        with gzip.open(vocab or open_clip_vocab()) as fh:
            lines = fh.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _MERGES + 1]]
        byte_chars = list(_bytes_to_unicode().values())
        words = [*byte_chars, *(c + "</w>" for c in byte_chars), *("".join(m) for m in merges)]
        special = (*_SPECIAL, *extra_special)
        words.extend(special)
        self._ids = {word: i for i, word in enumerate(words)}
        self._ranks = {(m[0], m[1]): i for i, m in enumerate(merges)}
        self._cache: dict[str, list[str]] = {t: [t] for t in special}
        self._pattern = regex.compile(
            "|".join(special) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.start_id, self.end_id = self._ids[_SPECIAL[0]], self._ids[_SPECIAL[1]]

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self._ids)

    def __call__(self, texts: list[str] | tuple[str, ...]) -> np.ndarray:
        """Token ids of shape (len(texts), context_length), int64."""
        out = np.zeros((len(texts), self.context_length), np.int64)
        for row, text in enumerate(texts):
            tokens = [self.start_id, *self.encode(text), self.end_id]
            if len(tokens) > self.context_length:
                tokens = tokens[: self.context_length]
                tokens[-1] = self.end_id
            out[row, : len(tokens)] = tokens
        return out

    def encode(self, text: str) -> list[int]:
        """Byte-pair token ids of one text, without start and end."""
        byte_chars = _bytes_to_unicode()
        ids: list[int] = []
        for piece in self._pattern.findall(_clean(text, self.cleaning)):
            word = "".join(byte_chars[b] for b in piece.encode("utf-8"))
            ids.extend(self._ids[part] for part in self._bpe(word))
        return ids

    def _bpe(self, token: str) -> list[str]:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda pair: self._ranks.get(pair, float("inf")))
            if best not in self._ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = word
        return word
