"""The torch-free tokenizer gives open_clip's ids, text for text."""

from __future__ import annotations

import functools

import numpy as np
import open_clip
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.tokenizer import ClipTokenizer

CORPUS = [
    "",
    "a dog",
    "A photo of a DOG on the beach at sunset",
    "  spaces\tand\nnewlines  everywhere ",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe",
    "\u6771\u4eac\u30bf\u30ef\u30fc\u306e\u591c\u666f",  # Tokyo tower at night
    "\u043a\u043e\u0448\u043a\u0430 \u043d\u0430 \u0434\u0438\u0432\u0430\u043d\u0435",  # a cat on a sofa
    "\U0001f415\U0001f3d6\ufe0f\U0001f305 dog beach sunset \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "fish &amp; chips &lt;b&gt; &#39;quoted&#39; &amp;amp;",
    "it's they're we've I'm you'll he'd",
    "IMG_0412.JPG 2023-07-14 12:30:00 f/2.8 1/250s ISO100",
    "mojibake: \u00e2\u0080\u0099s caf\u00c3\u00a9",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "zero\u200bwidth and\u00a0nbsp",
    "<start_of_text> literal special tokens <end_of_text>",
    "word " * 200,  # far longer than the context: cut, ends with the end token
    "antidisestablishmentarianism " * 30,
    "x" * 500,
]


@functools.cache
def _shared() -> ClipTokenizer:
    return ClipTokenizer()


@pytest.fixture(scope="module")
def pair() -> tuple[ClipTokenizer, open_clip.tokenizer.SimpleTokenizer]:
    return _shared(), open_clip.tokenizer.SimpleTokenizer()


def test_corpus_equals_open_clip(pair: tuple[ClipTokenizer, open_clip.tokenizer.SimpleTokenizer]) -> None:
    ours, theirs = pair
    assert np.array_equal(ours(CORPUS), theirs(CORPUS).numpy())
    long = ours(["word " * 200])[0]
    assert long[-1] == ours.end_id and long[0] == ours.start_id


@pytest.mark.parametrize("cleaning", ["whitespace", "canonicalize"])
def test_other_cleanings_and_contexts(cleaning: str) -> None:
    ours = ClipTokenizer(context_length=32, cleaning=cleaning)
    theirs = open_clip.tokenizer.SimpleTokenizer(context_length=32, clean=cleaning)
    assert np.array_equal(ours(CORPUS), theirs(CORPUS).numpy())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=120), min_size=1, max_size=4))
def test_any_text_equals_open_clip(texts: list[str]) -> None:
    ours, theirs = _shared(), open_clip.tokenizer._tokenizer
    assert np.array_equal(ours(texts), theirs(texts).numpy())
