"""The building blocks of SynthDASB's sentences: numbers in words, noun phrases, verb
groups, time and place phrases, and the clause (`mmllm.synth.grammar` puts them together).

Every function takes a `random.Random` and draws only from tuples, so output depends on the
rng state alone.
"""

from __future__ import annotations

import random

from mmllm.synth.lexicon import (
    _KIND_VERBS,
    _PERIODS,
    ABSTRACT,
    ADJ_PLACE,
    ADJ_THING,
    ADVERBS_FREQUENCY,
    ADVERBS_MANNER,
    ANIMALS,
    DAYS,
    DOCUMENTS,
    EVENTS,
    FIRST_NAMES,
    FOOD,
    MONTHS,
    PEOPLE,
    PLACE_NAMES,
    PLACE_NOUNS,
    PLACES,
    SCENERY,
    SURFACES,
    THINGS,
    VERBS,
    _Pool,
    _words,
)
from mmllm.text.numbers import ONES, number_words


def _clock(rng: random.Random) -> str:
    """A time of day: "seven fifteen", "half past nine", "ten o'clock", "noon"."""
    hour, minute = rng.randint(1, 12), rng.choice((0, 0, 5, 10, 15, 20, 30, 30, 40, 45, 50))
    style = rng.random()
    if style < 0.05:
        return rng.choice(("noon", "midnight"))
    if minute == 0:
        return f"{ONES[hour]} o'clock" if style < 0.6 else ONES[hour]
    if style < 0.3 and minute in (15, 30, 45):
        if minute == 45:
            return f"quarter to {ONES[hour % 12 + 1]}"
        return f"{'quarter' if minute == 15 else 'half'} past {ONES[hour]}"
    return f"{ONES[hour]} {'oh ' if minute < 10 else ''}{number_words(minute)}"


def _count(rng: random.Random) -> str:
    """A count >= 2, mostly small, as people usually talk about small amounts."""
    r = rng.random()
    if r < 0.6:
        return number_words(rng.randint(2, 12))
    return number_words(rng.randint(13, 99) if r < 0.85 else rng.randint(100, 999))


def _amount(rng: random.Random, unit: str, lo: int = 1, hi: int = 99) -> str:
    n = rng.randint(lo, hi)
    return f"{number_words(n)} {unit if n == 1 else unit + 's'}"


def _price(rng: random.Random) -> str:
    currency = rng.choice(("dollar", "dollar", "euro", "pound"))
    price = _amount(rng, currency, 1, rng.choice((20, 100, 2000)))
    if currency == "dollar" and rng.random() < 0.25:
        price += " and " + _amount(rng, "cent", 5, 95)
    return price


_SUBJECT_PRONOUNS = tuple(
    zip(_words("i you he she we they"), _words("1s 2 3s 3s 1p 3p"), strict=True)
)


_OBJECT_PRONOUNS = _words("me you him her us them")


_POSSESSIVES = _words("my your his her our their")


_SING_DETS = ("the",) * 6 + ("a",) * 4 + ("this", "that", "another") + _POSSESSIVES


_PLURAL_DETS = ("the",) * 4 + ("some", "these", "those", "many", "several") + _POSSESSIVES


_MASS_DETS = ("the",) * 4 + ("some", "this", "that") + _POSSESSIVES


_TENSES = ("past",) * 4 + ("present",) * 3 + ("progressive",) * 2 + ("future", "modal", "going")


_MODALS = _words("can could should might must would")


_NEG_MODALS = _words("can't couldn't shouldn't")


def _indefinite(word: str) -> str:
    if word.startswith(("uni", "use", "usu", "eu", "one")):
        return "a"
    return "an" if word[0] in "aeiou" or word in ("honest", "hour") else "a"


def _noun_phrase(
    rng: random.Random, pool: _Pool, plural: bool | None = None, adjectives: bool = True
) -> tuple[list[str], bool]:
    """(words, is_plural) for a determiner + up to two adjectives + noun."""
    noun, plural_form = rng.choice(pool.nouns)
    if plural is None:
        plural = rng.random() < 0.3
    plural = plural and plural_form is not None
    words = [plural_form if plural else noun]
    r = rng.random() if adjectives else 0.0
    for _ in range(0 if r < 0.45 else 1 if r < 0.9 else 2):
        adjective = rng.choice(pool.adjectives)
        if adjective not in words:
            words.insert(0, adjective)
    if plural:
        det = rng.choice(_PLURAL_DETS + ("NUM", "NUM", "a few"))
        det = _count(rng) if det == "NUM" else det
    elif plural_form is None:
        det = rng.choice(_MASS_DETS)
    else:
        det = rng.choice(_SING_DETS)
        det = _indefinite(words[0]) if det == "a" else det
    return det.split() + words, plural


def _bare_plural(rng: random.Random, pool: _Pool) -> list[str]:
    """ "[adjective] nouns" without determiner, for "three red apples", "any cookies"."""
    noun = rng.choice([plural for _, plural in pool.nouns if plural])
    return [rng.choice(pool.adjectives), noun] if rng.random() < 0.4 else [noun]


def _np(rng: random.Random, pool: _Pool, plural: bool | None = None) -> list[str]:
    return _noun_phrase(rng, pool, plural)[0]


def _the(rng: random.Random, nouns: tuple[str, ...], adjectives: tuple[str, ...] = ()) -> list[str]:
    """ "the [adjective] noun" over a plain word list."""
    words = ["the"]
    if adjectives and rng.random() < 0.3:
        words.append(rng.choice(adjectives))
    return words + [rng.choice(nouns)]


def _subject(rng: random.Random) -> tuple[list[str], str]:
    """(words, person) where person is one of 1s, 2, 3s, 1p, 3p, for agreement."""
    r = rng.random()
    if r < 0.25:
        pronoun, person = rng.choice(_SUBJECT_PRONOUNS)
        return [pronoun], person
    if r < 0.5:
        if rng.random() < 0.15:
            return [rng.choice(FIRST_NAMES), "and", rng.choice(FIRST_NAMES)], "3p"
        return [rng.choice(FIRST_NAMES)], "3s"
    words, plural = _noun_phrase(rng, PEOPLE if r < 0.88 else ANIMALS)
    return words, "3p" if plural else "3s"


def _person_object(rng: random.Random) -> list[str]:
    r = rng.random()
    if r < 0.4:
        return [rng.choice(FIRST_NAMES)]
    if r < 0.6:
        return [rng.choice(_OBJECT_PRONOUNS)]
    return _np(rng, PEOPLE)


def _be(person: str, past: bool = False, negative: bool = False) -> list[str]:
    if person == "1s":
        return ["was" + ("n't" if negative else "")] if past else ["am"] + (["not"] * negative)
    word = ("was" if past else "is") if person == "3s" else ("were" if past else "are")
    return [word + "n't" if negative else word]


def _verb_group(
    rng: random.Random, base: str, person: str, tense: str, negative: bool = False
) -> list[str]:
    """The conjugated verb: "took", "doesn't take", "were taking", "will take", ..."""
    forms = VERBS[base]
    if tense == "progressive" and forms.ing is None:
        tense = "past"
    if tense == "past":
        return ["didn't", base] if negative else [forms.past]
    if tense == "present":
        if negative:
            return ["doesn't" if person == "3s" else "don't", base]
        return [forms.s if person == "3s" else base]
    if tense == "progressive":
        return _be(person, False, negative) + [forms.ing]  # present: fits any time phrase
    if tense == "future":
        return ["won't" if negative else "will", base]
    if tense == "going":
        return _be(person, False, negative) + ["going", "to", base]
    return [rng.choice(_NEG_MODALS) if negative else rng.choice(_MODALS), base]


def _question_verb(rng: random.Random, base: str, person: str, tense: str) -> tuple[list[str], str]:
    """(auxiliary, main verb) for subject-auxiliary inversion: "did" ... "take"."""
    forms = VERBS[base]
    if tense == "progressive" and forms.ing is not None:
        return _be(person), forms.ing
    if tense == "present":
        return ["does" if person == "3s" else "do"], base
    if tense in ("future", "going"):
        return ["will"], base
    if tense == "modal":
        return [rng.choice(("can", "could", "should", "would"))], base
    return ["did"], base


def _time_phrase(rng: random.Random, tense: str) -> list[str]:
    """A time adverbial that agrees with the tense ("yesterday" only with the past)."""
    r = rng.random()
    if tense == "past":
        if r < 0.2:
            return ["yesterday"]
        if r < 0.35:
            return ["last", rng.choice(_PERIODS + ("night",))]
        if r < 0.5:
            return ["on", rng.choice(DAYS)]
        if r < 0.65:
            return ["in", rng.choice(MONTHS)]
        if r < 0.8:
            return [*_amount(rng, rng.choice(("day", "week", "year")), 2, 12).split(), "ago"]
        return ["this", rng.choice(("morning", "afternoon"))]
    if tense == "present":
        if r < 0.5:
            return ["every", rng.choice(_PERIODS + ("day", "morning", "evening"))]
        if r < 0.8:
            return ["in", "the", rng.choice(("morning", "afternoon", "evening"))]
        return ["at", rng.choice(("night", "weekends"))]
    if r < 0.2:
        return [rng.choice(("tomorrow", "tonight", "today", "soon", "later"))]
    if r < 0.4 and tense == "progressive":
        return rng.choice((["now"], ["right", "now"], ["at", "the", "moment"]))
    if r < 0.6:
        return ["next", rng.choice(_PERIODS)]
    if r < 0.8:
        return ["on", rng.choice(DAYS)]
    return ["in", rng.choice(MONTHS)]


def _location(rng: random.Random) -> list[str]:
    """Where something happens: "in the old kitchen", "near the river", "in paris"."""
    r = rng.random()
    if r < 0.2:
        return [rng.choice(("in", "in", "near")), rng.choice(PLACE_NAMES)]
    if r < 0.8:
        noun, prep = rng.choice(PLACES)
        prep = prep if rng.random() < 0.6 else rng.choice(("near", "behind", "outside"))
        return [prep, *_the(rng, (noun,), ADJ_PLACE)]
    return [rng.choice(("on", "under", "behind", "beside", "near")), *_the(rng, SURFACES)]


def _destination(rng: random.Random) -> list[str]:
    r = rng.random()
    if r < 0.35:
        return ["to", rng.choice(PLACE_NAMES)]
    if r < 0.9:
        return ["to", *_the(rng, PLACE_NOUNS, ADJ_PLACE)]
    return ["home"]


def _spot(rng: random.Random) -> list[str]:
    """Where a thing is put: "on the shelf", "in the drawer", "under the bed"."""
    if rng.random() < 0.25:
        return ["in", "the", rng.choice(_words("drawer cupboard box basket bag"))]
    return [rng.choice(("on", "under", "behind", "beside", "near")), *_the(rng, SURFACES)]


# How often each verb class is drawn, via repetition.
_KINDS = _words("""
    handle handle handle food food doc person person animal scenery abstract abstract event
    intrans intrans intrans move move place ditrans
""")


_KIND_POOLS = {
    "scenery": SCENERY,
    "handle": THINGS,
    "food": FOOD,
    "doc": _Pool(DOCUMENTS, ADJ_THING),
    "animal": ANIMALS,
    "abstract": ABSTRACT,
    "event": EVENTS,
    "place": THINGS,
}


def _object(rng: random.Random, kind: str) -> list[str]:
    """Everything after the verb that the verb needs (object, recipient, destination)."""
    if kind == "person":
        return _person_object(rng)
    if kind == "intrans":
        return [rng.choice(ADVERBS_MANNER)] if rng.random() < 0.5 else []
    if kind == "move":
        return _destination(rng)
    if kind == "ditrans":
        pool = rng.choice((THINGS, FOOD, THINGS))
        return _person_object(rng) + _np(rng, pool)
    words = _np(rng, _KIND_POOLS[kind])
    return words + _spot(rng) if kind == "place" else words


def _clause(rng: random.Random, extras: float = 0.35) -> list[str]:
    """subject + verb + object + optional place, time and manner."""
    subject, person = _subject(rng)
    kind = rng.choice(_KINDS)
    base, tense = rng.choice(_KIND_VERBS[kind]), rng.choice(_TENSES)
    negative = rng.random() < 0.12
    words = list(subject)
    if tense in ("past", "present") and not negative and rng.random() < 0.15:
        words.append(rng.choice(ADVERBS_FREQUENCY))
    words += _verb_group(rng, base, person, tense, negative) + _object(rng, kind)
    if kind not in ("move", "place") and rng.random() < extras:
        words += _location(rng)
    if rng.random() < extras:
        words += _time_phrase(rng, tense)
    elif kind not in ("intrans",) and rng.random() < extras / 2:
        words.append(rng.choice(ADVERBS_MANNER))
    return words
