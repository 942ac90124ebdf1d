"""Tests for the SynthDASB text (mmllm.synth.grammar, lexicon, labels) and mmllm.text: the SynthDASB sentence grammar, keywords, intents and normalizer."""

import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mmllm.corpus.labels import KS_COMMANDS, KS_LABELS, KS_SILENCE, KS_UNKNOWN
from mmllm.synth.grammar import ASR_SHAPES, ASR_VOCABULARY, asr_sentence, asr_sentence_with_shape
from mmllm.synth.labels import (
    ER_EMOTIONS,
    ER_SENTENCES,
    INTENTS,
    KS_UNKNOWN_WORDS,
    Intent,
    ic_phrasings,
    ic_utterance,
)
from mmllm.synth.lexicon import (
    _IRREGULAR_VERBS,
    ABSTRACT,
    FIRST_NAMES,
    FOOD,
    PEOPLE,
    PLACE_NAMES,
    THINGS,
    VERBS,
)
from mmllm.text.normalize import normalize_text
from mmllm.text.numbers import ONES, ORDINALS, TENS, number_words, ordinal_words, year_words

# Lowercase words, single spaces, apostrophes only inside a word ("don't", "o'clock").
WORD = re.compile(r"^[a-z]+(?:'[a-z]+)*$")
SENTENCE = re.compile(r"^[a-z]+(?:'[a-z]+)*(?: [a-z]+(?:'[a-z]+)*)*$")
REPO = Path(__file__).resolve().parents[2]


def _sample(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [asr_sentence_with_shape(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def samples() -> list[tuple[str, str]]:
    return _sample(2000, seed=1234)


# The number of ASR sentences SynthDASB trains on: the vocabulary is sized for it.
TRAIN_SENTENCES = 6000


@pytest.fixture(scope="module")
def train_word_counts() -> Counter[str]:
    rng = random.Random(2025)
    return Counter(w for _ in range(TRAIN_SENTENCES) for w in asr_sentence(rng).split())


# --- ASR ------------------------------------------------------------------------------


def test_vocabulary_is_sized_for_training_and_well_formed():
    # Large enough that ASR is not trivial, small enough that a few thousand training
    # sentences show each word several times.
    assert 1000 <= len(ASR_VOCABULARY) <= 1400
    assert all(WORD.match(w) for w in ASR_VOCABULARY), sorted(
        w for w in ASR_VOCABULARY if not WORD.match(w)
    )
    # Inflected forms and spelled numbers are part of it.
    for word in ("took", "taking", "takes", "children", "knives", "o'clock", "don't", "ninety"):
        assert word in ASR_VOCABULARY


def test_word_lists_have_the_promised_sizes():
    assert len(set(FIRST_NAMES)) == len(FIRST_NAMES) >= 70
    assert len(set(PLACE_NAMES)) == len(PLACE_NAMES) >= 35
    assert len(VERBS) >= 80
    nouns = {n for pool in (PEOPLE, THINGS, FOOD, ABSTRACT) for n, _ in pool.nouns}
    assert len(nouns) >= 120


def test_sentences_use_only_vocabulary_and_allowed_characters(samples):
    for _, sentence in samples:
        assert SENTENCE.match(sentence), sentence
        assert 4 <= len(sentence.split()) <= 16, sentence
        unknown = [w for w in sentence.split() if w not in ASR_VOCABULARY]
        assert not unknown, (sentence, unknown)
        assert normalize_text(sentence) == sentence


def test_every_shape_appears_with_a_sensible_share(samples):
    counts = Counter(shape for shape, _ in samples)
    assert set(counts) == set(ASR_SHAPES)
    assert len(ASR_SHAPES) >= 8
    assert all(counts[shape] >= 40 for shape in ASR_SHAPES), counts


def test_shapes_look_like_their_names(samples):
    by_shape: dict[str, list[str]] = {}
    for shape, sentence in samples:
        by_shape.setdefault(shape, []).append(sentence)
    wh = ("what", "where", "who", "when", "why", "how", "which", "whose")
    assert all(s.split()[0] in wh for s in by_shape["wh_question"])
    names = set(FIRST_NAMES)
    assert all(names & set(s.split()) for s in by_shape["names"])
    numbers = set(ONES + TENS + ORDINALS) | {"noon", "midnight", "thirtieth"}
    assert all(numbers & set(s.split()) for s in by_shape["number"])
    places = set(PLACE_NAMES)
    assert sum(bool(places & set(s.split())) for s in by_shape["places"]) >= 0.9 * len(
        by_shape["places"]
    )


def test_sentences_are_varied(samples):
    sentences = [s for _, s in samples]
    assert len(set(sentences)) > 0.95 * len(sentences)
    lengths = Counter(len(s.split()) for s in sentences)
    assert min(lengths) == 4 and max(lengths) >= 14


def test_most_of_the_vocabulary_is_reachable():
    rng = random.Random(7)
    seen = {w for _ in range(5000) for w in asr_sentence(rng).split()}
    assert len(seen) >= 800
    assert len(seen) >= 0.8 * len(ASR_VOCABULARY)


def test_training_set_covers_the_vocabulary(train_word_counts):
    assert set(train_word_counts) <= ASR_VOCABULARY
    assert len(train_word_counts) >= 1000
    frequent = sum(train_word_counts[w] >= 5 for w in ASR_VOCABULARY) / len(ASR_VOCABULARY)
    print(
        f"{len(train_word_counts)} of {len(ASR_VOCABULARY)} vocabulary words in "
        f"{TRAIN_SENTENCES} sentences; {frequent:.1%} of the vocabulary occurs >= 5 times"
    )
    assert frequent >= 0.6


def test_same_seed_same_sentences():
    first = [asr_sentence(random.Random(99)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    a, b = _sample(100, seed=5), _sample(100, seed=5)
    assert a == b
    assert a != _sample(100, seed=6)
    rng = random.Random(5)
    assert [asr_sentence(rng) for _ in range(100)] == [s for _, s in a]


def test_output_does_not_depend_on_hash_seed():
    code = (
        "import random\n"
        "from mmllm.synth.grammar import asr_sentence\n"
        "from mmllm.synth.labels import ic_utterance, INTENTS\n"
        "rng = random.Random(2024)\n"
        "print('\\n'.join(asr_sentence(rng) for _ in range(100)))\n"
        "print('\\n'.join(ic_utterance(i, rng) for i in INTENTS))\n"
    )
    outputs = []
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(result.stdout)
    rng = random.Random(2024)
    here = [asr_sentence(rng) for _ in range(100)] + [ic_utterance(i, rng) for i in INTENTS]
    assert outputs[0] == outputs[1] == "\n".join(here) + "\n"


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (15, "fifteen"),
        (40, "forty"),
        (23, "twenty three"),
        (100, "one hundred"),
        (205, "two hundred and five"),
        (999, "nine hundred and ninety nine"),
        (1005, "one thousand and five"),
        (2350, "two thousand three hundred and fifty"),
    ],
)
def test_number_words(n, words):
    assert number_words(n) == words


def test_years_ordinals_and_range_checks():
    assert year_words(1984) == "nineteen eighty four"
    assert year_words(1905) == "nineteen oh five"
    assert year_words(1900) == "nineteen hundred"
    assert year_words(2005) == "two thousand and five"
    assert year_words(2021) == "twenty twenty one"
    assert [ordinal_words(d) for d in (1, 2, 3, 12, 20, 21, 30, 31)] == [
        "first",
        "second",
        "third",
        "twelfth",
        "twentieth",
        "twenty first",
        "thirtieth",
        "thirty first",
    ]
    for bad in (lambda: number_words(-1), lambda: ordinal_words(32)):
        with pytest.raises(ValueError):
            bad()


def test_verb_inflections():
    forms = VERBS
    assert (forms["carry"].s, forms["carry"].past, forms["carry"].ing) == (
        "carries",
        "carried",
        "carrying",
    )
    assert (forms["watch"].s, forms["go"].s, forms["go"].past) == ("watches", "goes", "went")
    assert (forms["stop"].past, forms["stop"].ing, forms["bake"].ing) == (
        "stopped",
        "stopping",
        "baking",
    )
    assert forms["want"].ing is None  # stative: never "is wanting"
    # Every spelled-out irregular verb is actually used by some verb class.
    assert {spec.split("/")[0] for spec in _IRREGULAR_VERBS} <= set(forms)


# --- keyword spotting -----------------------------------------------------------------


def test_keyword_labels():
    assert len(KS_LABELS) == 12 == len(set(KS_LABELS))
    assert KS_LABELS[:10] == KS_COMMANDS and KS_LABELS[10:] == (KS_UNKNOWN, KS_SILENCE)
    assert 20 <= len(KS_UNKNOWN_WORDS) == len(set(KS_UNKNOWN_WORDS))
    assert not set(KS_UNKNOWN_WORDS) & set(KS_COMMANDS)
    assert all(WORD.match(w) for w in KS_COMMANDS + KS_UNKNOWN_WORDS)


# --- intents --------------------------------------------------------------------------


def test_intents_have_unique_labels():
    assert len(INTENTS) >= 24
    labels = [intent.label for intent in INTENTS]
    assert len(set(labels)) == len(labels)
    assert Intent("increase", "heat", "kitchen").label == "increase_heat_kitchen"
    assert Intent("activate", "music").label == "activate_music_none"
    assert "change_language_chinese_none" in labels


def test_intent_phrasings_are_distinct_and_never_shared():
    owner: dict[str, str] = {}
    for intent in INTENTS:
        phrasings = ic_phrasings(intent)
        assert len(phrasings) >= 3
        assert len(set(phrasings)) == len(phrasings)
        for phrasing in phrasings:
            assert SENTENCE.match(phrasing), phrasing
            assert phrasing not in owner, (phrasing, owner.get(phrasing), intent.label)
            owner[phrasing] = intent.label
    assert "turn on the lights in the kitchen" in ic_phrasings(
        Intent("activate", "lights", "kitchen")
    )
    assert "turn on the lights" in ic_phrasings(Intent("activate", "lights"))


def test_intent_utterances():
    rng = random.Random(3)
    intent = Intent("decrease", "heat", "living_room")
    drawn = {ic_utterance(intent, rng) for _ in range(200)}
    assert drawn == set(ic_phrasings(intent))
    assert all("living room" in u for u in drawn)
    with pytest.raises(ValueError):
        ic_phrasings(Intent("bring", "lights", "kitchen"))


# --- emotion --------------------------------------------------------------------------


def test_emotion_sentences():
    assert ER_EMOTIONS == ("neutral", "happy", "sad", "angry")
    assert len(ER_SENTENCES) >= 50 and len(set(ER_SENTENCES)) == len(ER_SENTENCES)
    for sentence in ER_SENTENCES:
        assert SENTENCE.match(sentence), sentence
        assert 5 <= len(sentence.split()) <= 9, sentence


# --- normalization --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Hello, World!", "hello world"),
        ("  the   train\tleaves\nat SEVEN.  ", "the train leaves at seven"),
        ("Don\u2019t stop", "don't stop"),
        ("it's 7 o'clock", "it's seven o'clock"),  # digits spelled out, as SynthDASB speaks
        ("25 cats on the 3rd", "twenty five cats on the third"),
        (
            "in 1984, 2005 and 2.5",
            "in nineteen eighty four two thousand and five and two point five",
        ),
        ("1,200 people", "one thousand two hundred people"),
        ("twenty-three", "twenty three"),
        ("'quoted' words", "quoted words"),
        ("Café NAÏVE", "cafe naive"),
        ("!!! ...", ""),
        ("", ""),
    ],
)
def test_normalize_text(raw, normalized):
    assert normalize_text(raw) == normalized
    assert normalize_text(normalized) == normalized
