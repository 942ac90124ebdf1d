"""SynthDASB's sentence grammar: ASR (and TTS) sentences and GRID's small-vocabulary grammar.

SynthDASB is rendered offline by eSpeak NG, so every string here has to be speakable by a
rule-based TTS and scorable by plain word error rate. Hence one character rule everywhere:
lowercase a-z words separated by single spaces, apostrophes only inside words ("don't",
"o'clock"), numbers spelled out ("two hundred and five", `mmllm.text.numbers`).
`mmllm.text.normalize.normalize_text` maps any other transcript (e.g. a model's output)
onto the same rule before scoring.

Public API: ASR_VOCABULARY, ASR_SHAPES, asr_sentence(_with_shape) for ASR (and TTS) text;
GRID_VOCABULARY, grid_sentence for GRID's small-vocabulary grammar. Word lists live in
`mmllm.synth.lexicon`, keywords, intents and emotion sentences in `mmllm.synth.labels`.

Determinism: every generator takes a `random.Random` and draws only from tuples (never from
sets), so output depends on the rng state alone and not on PYTHONHASHSEED.
"""

from __future__ import annotations

import random

from mmllm.synth.lexicon import (
    _KIND_VERBS,
    _STATIVE,
    ABSTRACT,
    ADJ_FOOD,
    ADJ_PERSON,
    ADJ_PLACE,
    ADJ_SOUND,
    ADJ_THING,
    ADJ_WEATHER,
    ADVERBS_DEGREE,
    ADVERBS_FREQUENCY,
    ADVERBS_MANNER,
    ANIMALS,
    DAYS,
    EVENTS,
    FIRST_NAMES,
    FOOD,
    MONTHS,
    PEOPLE,
    PLACE_NAMES,
    PLACE_NOUNS,
    SCENERY,
    SEASONS,
    SURFACES,
    THINGS,
    V_DITRANS,
    V_HANDLE,
    V_INTRANS,
    V_PERSON,
    V_PLACE,
    VEHICLES,
    VERBS,
    _words,
)
from mmllm.synth.phrases import (
    _KIND_POOLS,
    _KINDS,
    _POSSESSIVES,
    _TENSES,
    _amount,
    _bare_plural,
    _be,
    _clause,
    _clock,
    _count,
    _indefinite,
    _location,
    _noun_phrase,
    _np,
    _object,
    _price,
    _question_verb,
    _subject,
    _the,
    _time_phrase,
    _verb_group,
)
from mmllm.text.numbers import ONES, ORDINALS, TENS, ordinal_words, year_words


def _statement(rng: random.Random) -> list[str]:
    return _clause(rng)


def _yes_no_question(rng: random.Random) -> list[str]:
    r = rng.random()
    if r < 0.15:
        pool = rng.choice((THINGS, FOOD, PEOPLE))
        subject, plural = _noun_phrase(rng, pool)
        aux = rng.choice(("are", "were") if plural else ("is", "was"))
        return [aux, *subject, rng.choice(ADVERBS_DEGREE + ("",) * 4), rng.choice(pool.adjectives)]
    if r < 0.25:
        things = _bare_plural(rng, rng.choice((THINGS, FOOD, ANIMALS)))
        return ["are", "there", "any", *things, *_location(rng)]
    subject, person = _subject(rng)
    kind, tense = rng.choice(_KINDS), rng.choice(_TENSES)
    aux, verb = _question_verb(rng, rng.choice(_KIND_VERBS[kind]), person, tense)
    words = aux + subject + [verb] + _object(rng, kind)
    return words + _time_phrase(rng, tense) if r < 0.45 else words


def _wh_question(rng: random.Random) -> list[str]:
    subject, person = _subject(rng)
    tense = rng.choice(_TENSES)
    r = rng.random()
    if r < 0.2:  # object gap: "what did the old doctor buy at the market"
        kind = rng.choice(("handle", "food", "doc", "abstract", "event"))
        aux, verb = _question_verb(rng, rng.choice(_KIND_VERBS[kind]), person, tense)
        return ["what", *aux, *subject, verb, *(_location(rng) if rng.random() < 0.5 else [])]
    if r < 0.35:  # "where did maria put the blue box"
        verbs = V_PLACE + ("find", "buy", "lose")
        aux, verb = _question_verb(rng, rng.choice(verbs), person, tense)
        return ["where", *aux, *subject, verb, *_np(rng, THINGS)]
    if r < 0.45:  # subject gap: "who broke the window"
        kind = rng.choice(("handle", "food", "person", "animal", "ditrans"))
        verb = _verb_group(rng, rng.choice(_KIND_VERBS[kind]), "3s", tense)
        return ["who", *verb, *_object(rng, kind)]
    if r < 0.55:
        aux, verb = _question_verb(rng, rng.choice(V_PERSON), person, tense)
        return ["who", *aux, *subject, verb, *_location(rng)]
    if r < 0.65:  # "when will the students attend the concert"
        kind = rng.choice(("event", "move", "abstract", "intrans"))
        aux, verb = _question_verb(rng, rng.choice(_KIND_VERBS[kind]), person, tense)
        return [rng.choice(("when", "why", "how")), *aux, *subject, verb, *_object(rng, kind)]
    if r < 0.75:
        kind = rng.choice(("handle", "food", "animal"))  # "how many cows did you feed"
        noun = rng.choice([plural for _, plural in _KIND_POOLS[kind].nouns if plural])
        aux, verb = _question_verb(rng, rng.choice(_KIND_VERBS[kind]), person, tense)
        return ["how", "many", noun, *aux, *subject, verb, *_location(rng)]
    if r < 0.83:
        aux = ["is"] if person == "3s" else ["am"] if person == "1s" else ["are"]
        return ["why", *aux, *subject, rng.choice(ADVERBS_DEGREE[:4]), rng.choice(ADJ_PERSON)]
    if r < 0.9:
        return ["how", "much", "does", *_the(rng, _THING_NOUNS, ADJ_THING), "cost"]
    if r < 0.96:
        aux, verb = _question_verb(rng, rng.choice(V_HANDLE), person, tense)
        return ["which", rng.choice(_THING_NOUNS), *aux, *subject, verb]
    return ["whose", rng.choice(_THING_NOUNS), "is", rng.choice(("this", "that"))]


_THING_NOUNS = tuple(noun for noun, _ in THINGS.nouns)


_EVENT_NOUNS = tuple(noun for noun, _ in EVENTS.nouns)


_SCHEDULES = (  # things that run on a timetable, with their verbs
    (VEHICLES, ("leave", "arrive")),
    (_EVENT_NOUNS, ("start", "end", "finish")),
    (_words("shop bank museum library market cafe"), ("open", "close")),
)


def _number(rng: random.Random) -> list[str]:
    r = rng.random()
    if r < 0.15:
        things = _bare_plural(rng, rng.choice((THINGS, FOOD, ANIMALS, PEOPLE)))
        return ["there", rng.choice(("are", "were")), _count(rng), *things, *_location(rng)]
    subject, person = _subject(rng)
    tense = rng.choice(("past", "present", "future", "progressive"))
    if r < 0.3:
        kind = rng.choice(("handle", "food"))
        verb = _verb_group(rng, rng.choice(_KIND_VERBS[kind]), person, tense)
        return [*subject, *verb, _count(rng), *_bare_plural(rng, _KIND_POOLS[kind])]
    if r < 0.45:
        thing = _the(rng, _THING_NOUNS, ADJ_THING)
        if rng.random() < 0.5:
            return [*thing, *_verb_group(rng, "cost", "3s", tense), _price(rng)]
        paid = _verb_group(rng, "pay", person, tense)
        return [*subject, *paid, _price(rng), "for", *thing]
    if r < 0.55:
        year = year_words(rng.randint(1900, 2029))
        if rng.random() < 0.5:
            return [*subject, *_be(person, past=True), "born", "in", year]
        return [*_the(rng, PLACE_NOUNS, ADJ_PLACE), "was", "built", "in", year]
    if r < 0.75:
        what, verbs = rng.choice(_SCHEDULES)
        when = ["at", _clock(rng)] + _time_phrase(rng, tense) * (rng.random() < 0.3)
        return [*_the(rng, what), *_verb_group(rng, rng.choice(verbs), "3s", tense), *when]
    if r < 0.85:
        day = ["the", ordinal_words(rng.randint(1, 31)), "of", rng.choice(MONTHS)]
        event = [rng.choice(_POSSESSIVES + ("the",)), rng.choice(_EVENT_NOUNS)]
        return [*event, *_be("3s", rng.random() < 0.3), "on", *day]
    if r < 0.92:
        return [rng.choice(FIRST_NAMES), "is", _amount(rng, "year", 2, 99), "old"]
    if r < 0.96:
        digits = [ONES[rng.randint(0, 9)] for _ in range(rng.randint(4, 7))]
        return [rng.choice(_POSSESSIVES), rng.choice(("number", "code")), "is", *digits]
    if rng.random() < 0.5:
        unit = rng.choice(("minute", "hour", "day"))
        return ["the", rng.choice(_EVENT_NOUNS), "took", _amount(rng, unit, 1, 90)]
    distance = _amount(rng, rng.choice(("meter", "kilometer")), 1, 90)
    return [*_the(rng, PLACE_NOUNS), "is", distance, "away"]


def _names(rng: random.Random) -> list[str]:
    a, b = rng.choice(FIRST_NAMES), rng.choice(FIRST_NAMES)
    tense = rng.choice(_TENSES)
    r = rng.random()
    if r < 0.3:  # "maria gave thomas three apples"
        pool = rng.choice((THINGS, FOOD))
        verb = _verb_group(rng, rng.choice(V_DITRANS), "3s", tense)
        return [a, *verb, b, *_np(rng, pool)]
    if r < 0.5:
        verb = _verb_group(rng, rng.choice(("tell", "ask", "teach", "remind", "warn")), "3s", tense)
        return [a, *verb, b, "about", *_np(rng, rng.choice((ABSTRACT, EVENTS)))]
    if r < 0.7:
        verb = _verb_group(rng, rng.choice(V_PERSON), "3s", tense)
        return [a, *verb, b, *_location(rng)]
    if r < 0.85:
        kind = rng.choice(("handle", "food", "event", "abstract"))
        verb = _verb_group(rng, rng.choice(("ask", "tell", "help", "remind")), "3s", "past")
        return [a, *verb, b, "to", rng.choice(_KIND_VERBS[kind]), *_object(rng, kind)]
    relation = rng.choice(_words("friends cousins neighbors brothers sisters partners"))
    return [a, "and", b, rng.choice(("are", "were")), rng.choice(("", "old", "good")), relation]


_FAMOUS_FOR = _words("history music art weather nature beauty bread cheese coffee tea")


def _places(rng: random.Random) -> list[str]:
    subject, person = _subject(rng)
    place, other = rng.choice(PLACE_NAMES), rng.choice(PLACE_NAMES)
    tense = rng.choice(("past", "past", "future", "going", "present", "progressive"))
    r = rng.random()
    if r < 0.3:
        base = rng.choice(("fly", "travel", "drive", "move", "go", "return"))
        verb = _verb_group(rng, base, person, tense)
        return [*subject, *verb, "to", place, *_time_phrase(rng, tense)]
    if r < 0.45:
        verb = _verb_group(rng, rng.choice(("live", "work", "study", "stay")), person, "past")
        return [*subject, *verb, "in", place, "for", _amount(rng, "year", 1, 30)]
    if r < 0.6:
        be, weather, when = (
            rng.choice(("is", "was")),
            rng.choice(ADJ_WEATHER),
            rng.choice(SEASONS + MONTHS),
        )
        return ["the", "weather", "in", place, be, weather, "in", when]
    if r < 0.7:
        verb = _verb_group(rng, rng.choice(("drive", "fly", "travel", "walk")), person, "past")
        return [*subject, *verb, "from", place, "to", other]
    if r < 0.8:
        verb = _verb_group(rng, "visit", person, tense)
        return [*subject, *verb, place, *_time_phrase(rng, tense)]
    if r < 0.88:
        return ["is", place, "far", "from", other]
    if r < 0.95:
        return [place, "is", "famous", "for", "its", rng.choice(_FAMOUS_FOR)]
    verb = _verb_group(rng, rng.choice(("buy", "find", "sell")), person, "past")
    return [*subject, *verb, *_np(rng, THINGS), "in", place]


def _command(rng: random.Random) -> list[str]:
    r = rng.random()
    kind = rng.choice(("handle", "food", "doc", "animal", "place", "scenery"))
    verbs = tuple(v for v in _KIND_VERBS[kind] if v not in _STATIVE)  # not "don't prefer the cake"
    action = [rng.choice(verbs), *_object(rng, kind)]
    if r < 0.35:
        return ["please", *action] if rng.random() < 0.5 else [*action, "please"]
    if r < 0.45:
        return ["don't", *action]
    if r < 0.55:
        kind = rng.choice(("move", "event", "food", "intrans"))
        return ["let's", rng.choice(_KIND_VERBS[kind]), *_object(rng, kind)]
    if r < 0.7:
        pool = rng.choice((THINGS, FOOD))
        request = [rng.choice(("could", "can", "would")), "you", rng.choice(V_DITRANS), "me"]
        return request + _np(rng, pool) + ["please"] * (rng.random() < 0.3)
    if r < 0.8:
        device = rng.choice(_words("lamp radio computer laptop phone camera oven heater fan"))
        return [rng.choice(("turn", "switch")), rng.choice(("on", "off")), "the", device]
    if r < 0.9:
        return [rng.choice(("remember", "try", "try", "remember")), "to", *action]
    verb = rng.choice(V_INTRANS)
    return [verb, rng.choice(ADVERBS_MANNER), *(["please"] * (rng.random() < 0.4))]


def _description(rng: random.Random) -> list[str]:
    tense_be = rng.choice(("is", "was"))
    degree = [rng.choice(ADVERBS_DEGREE)] * (rng.random() < 0.5)
    r = rng.random()
    if r < 0.35:
        pool = rng.choice((THINGS, FOOD, ABSTRACT, PEOPLE, ANIMALS, SCENERY))
        subject, plural = _noun_phrase(rng, pool, adjectives=False)
        be = {"is": "are", "was": "were"}[tense_be] if plural else tense_be
        be += "n't" if rng.random() < 0.15 else ""
        return [*subject, be, *degree, rng.choice(pool.adjectives)]
    if r < 0.55:
        subject, person = _subject(rng)
        base = rng.choice(("look", "seem", "feel"))
        verb = _verb_group(rng, base, person, rng.choice(("past", "present", "progressive")))
        return [*subject, *verb, *degree, rng.choice(ADJ_PERSON)]
    if r < 0.7:
        subject = _np(rng, FOOD, False)
        verb = _verb_group(rng, rng.choice(("taste", "smell", "look")), "3s", "present")
        return [*subject, *verb, *degree, rng.choice(ADJ_FOOD)]
    if r < 0.8:
        subject = ["the", rng.choice(("music", "song", "idea", "plan", "story", "news"))]
        verb = _verb_group(rng, "sound", "3s", rng.choice(("past", "present", "future")))
        return [*subject, *verb, *degree, rng.choice(ADJ_SOUND)]
    if r < 0.9:
        when = rng.choice(
            (["it's", "today"], ["it", "was", "yesterday"], ["it'll", "be", "tonight"])
        )
        return [*when[:-1], *degree, rng.choice(ADJ_WEATHER), when[-1]]
    thing = [rng.choice(ADJ_THING), rng.choice(_THING_NOUNS)][rng.randint(0, 1) :]
    return ["there", tense_be, _indefinite(thing[0]), *thing, *_location(rng)]


def _compound(rng: random.Random) -> list[str]:
    conjunction = rng.choice(_words("and but because so while after before although until when if"))
    return [*_clause(rng, extras=0.0), conjunction, *_clause(rng, extras=0.0)]


_SHAPE_BUILDERS = (
    ("statement", _statement, 20),
    ("yes_no_question", _yes_no_question, 10),
    ("wh_question", _wh_question, 12),
    ("number", _number, 14),
    ("names", _names, 12),
    ("places", _places, 9),
    ("command", _command, 10),
    ("description", _description, 7),
    ("compound", _compound, 6),
)


ASR_SHAPES: tuple[str, ...] = tuple(name for name, _, _ in _SHAPE_BUILDERS)


ASR_MIN_WORDS, ASR_MAX_WORDS = 4, 16


def asr_sentence_with_shape(rng: random.Random) -> tuple[str, str]:
    """(shape, sentence): one ASR transcript of ASR_MIN_WORDS..ASR_MAX_WORDS words."""
    name, build, _ = rng.choices(_SHAPE_BUILDERS, weights=[w for _, _, w in _SHAPE_BUILDERS])[0]
    # Resample within the shape rather than truncating, so every sentence stays grammatical
    # and the shape mix stays as weighted.
    for _ in range(1000):
        words = [w for part in build(rng) for w in part.split()]  # parts may be multi-word
        if ASR_MIN_WORDS <= len(words) <= ASR_MAX_WORDS:
            return name, " ".join(words)
    raise RuntimeError(f"shape {name!r} never produced a sentence of allowed length")


def asr_sentence(rng: random.Random) -> str:
    """One ASR transcript; see asr_sentence_with_shape."""
    return asr_sentence_with_shape(rng)[1]


# GRID's grammar (Cooke et al. 2006): command colour preposition letter digit adverb, 51 words.
# A small-vocabulary ASR set (`SynthConfig.sentence_grammar: grid`) to check in minutes that a
# model listens at all, before spending hours on the 1000-word grammar above.
GRID_SLOTS: tuple[tuple[str, ...], ...] = (
    _words("bin lay place set"),
    _words("blue green red white"),
    _words("at by in with"),
    tuple("abcdefghijklmnopqrstuvxyz"),  # GRID leaves out w, the only letter of three syllables
    _words("zero one two three four five six seven eight nine"),
    _words("again now please soon"),
)


GRID_VOCABULARY: tuple[str, ...] = tuple(w for slot in GRID_SLOTS for w in slot)


def grid_sentence(rng: random.Random) -> str:
    """One GRID sentence, e.g. "bin blue at f two now": one word from each slot."""
    return " ".join(rng.choice(slot) for slot in GRID_SLOTS)


# Words used literally by the templates above (the lists cover everything else).
_FUNCTION_WORDS = _words("""
    i you he she we they it me him her us them my your his our their its the a an this that
    these those some any many several few another every am is are was were be not do does did
    don't doesn't didn't will won't can can't could couldn't should shouldn't might must would
    isn't aren't wasn't weren't it's it'll let's going to in on at near behind outside under
    beside by for about from and but because so while after before although until when if what
    where who why how which whose much please there home now right moment yesterday today
    tomorrow tonight soon later last next ago night morning afternoon evening day days weekends
    born built far famous its old good friends cousins neighbors brothers sisters partners
    turn switch off oven heater fan number code took weather hundred thousand o'clock oh half
    past quarter noon midnight dollar dollars euro euros pound pounds cents year years
    minute minutes hour hours kilometer kilometers meter meters week weeks month weekend of try away
""")


def _build_vocabulary() -> frozenset[str]:
    words = set(_FUNCTION_WORDS + FIRST_NAMES + PLACE_NAMES + PLACE_NOUNS + SURFACES + ADJ_SOUND)
    words |= set(VEHICLES + DAYS + MONTHS + SEASONS + ONES + TENS[2:] + ORDINALS + ("thirtieth",))
    words |= set(ADJ_PLACE + ADJ_WEATHER)
    words |= set(ADVERBS_MANNER + ADVERBS_FREQUENCY + ADVERBS_DEGREE)
    for pool in (PEOPLE, ANIMALS, THINGS, FOOD, ABSTRACT, EVENTS, SCENERY):
        words |= set(pool.adjectives)
        for singular, plural in pool.nouns:
            words |= {singular, plural} - {None}
    for forms in VERBS.values():
        words |= {forms.base, forms.s, forms.past, forms.ing} - {None}
    return frozenset(words)


ASR_VOCABULARY: frozenset[str] = _build_vocabulary()
