"""The one transcript normaliser: every WER/CER, every dWER, every corpus adapter's
transcripts go through `normalize_text` (lowercase a-z words, apostrophes inside words,
single spaces), so scores compare like with like.
"""

from __future__ import annotations

import re
import unicodedata

from mmllm.text.numbers import spell_numbers

_CURLY_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


_NOT_ALLOWED = re.compile(r"[^a-z' ]+")


def normalize_text(text: str) -> str:
    """The one normalizer for SynthDASB transcripts and model outputs before scoring.

    Spells digits out the way SynthDASB speaks them (`spell_numbers`: a recogniser that
    writes "25" is scored against "twenty five"), lowercases, folds accents ("café" ->
    "cafe") and typographic apostrophes, turns every other character (punctuation,
    hyphens, newlines) into a word break, drops apostrophes that are quotes rather than
    part of a word, and collapses whitespace.
    """
    text = spell_numbers(text)
    text = unicodedata.normalize("NFKD", text.translate(_CURLY_APOSTROPHES))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = _NOT_ALLOWED.sub(" ", text)
    return " ".join(w for w in (w.strip("'") for w in text.split()) if w)
