"""SynthDASB's word lists (pure data): names, places, noun pools with their adjectives,
verbs with their forms. Every entry is a lowercase word eSpeak NG can say.
"""

from __future__ import annotations

from dataclasses import dataclass


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words("""
    thomas david james john robert michael william daniel mark paul steven andrew kevin brian
    george edward jason ryan eric scott samuel frank patrick jack henry adam peter arthur noah
    oliver leo oscar max felix victor simon martin carlos omar lucas maria anna mary linda susan
    sarah karen lisa emily laura amy helen nicole emma rachel julie victoria olivia kelly hannah
    alice grace julia sophia charlotte rose lucy ella chloe zoe mia nina elena clara eva paula
    jane kate molly sally
""")


# Single words only, chosen so eSpeak's English rules pronounce them acceptably.
PLACE_NAMES = _words("""
    paris london tokyo berlin madrid rome cairo dublin vienna prague moscow sydney toronto chicago
    boston seattle miami lisbon athens amsterdam venice barcelona mexico brazil canada spain
    france italy germany japan china india egypt kenya australia norway sweden greece ireland
    scotland
""")


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _count_nouns(text: str) -> tuple[tuple[str, str | None], ...]:
    """Countable nouns; "knife/knives" spells out an irregular plural."""
    out = []
    for item in text.split():
        singular, _, plural = item.partition("/")
        out.append((singular, plural or _plural(singular)))
    return tuple(out)


def _mass_nouns(text: str) -> tuple[tuple[str, str | None], ...]:
    """Mass or abstract nouns: used in the singular only, so no plural enters the vocabulary."""
    return tuple((w, None) for w in text.split())


@dataclass(frozen=True)
class _Pool:
    """A noun class plus the adjectives that sound natural in front of it."""

    nouns: tuple[tuple[str, str | None], ...]
    adjectives: tuple[str, ...]


ADJ_THING = _words("""
    big small large tiny huge little long short heavy light old new red blue green yellow black
    white brown pink golden wooden soft hard clean dirty wet dry empty full broken cheap expensive
    beautiful pretty dark bright strange simple useful nice lovely perfect favorite
""")


ADJ_PERSON = _words("""
    happy sad angry tired hungry thirsty sleepy busy lazy brave shy kind friendly clever polite
    rude honest calm nervous proud lonely curious worried excited bored careful patient young old
    tall rich poor famous funny serious nice
""")


ADJ_FOOD = _words("""
    fresh ripe sweet sour salty spicy delicious tasty hot cold warm frozen juicy green red small big
""")


ADJ_ABSTRACT = _words("""
    important difficult easy simple strange interesting boring serious terrible wonderful clear
    dangerous useful new old secret good bad great
""")


ADJ_PLACE = _words("""
    old new big small quiet busy beautiful empty crowded famous little dark noisy clean lovely
""")


ADJ_WEATHER = _words("sunny cloudy windy rainy snowy foggy cold warm hot cool freezing")


PEOPLE = _Pool(
    _count_nouns("""
        doctor teacher farmer nurse driver student child/children neighbor friend artist waiter
        boy girl man/men woman/women baby customer tourist guest uncle aunt cousin brother sister
        mother father son daughter boss worker person/people
    """),
    ADJ_PERSON,
)


ANIMALS = _Pool(
    _count_nouns("""
        dog cat horse cow sheep/sheep pig rabbit mouse/mice bird duck chicken fox bear lion tiger
        monkey elephant snake frog fish/fish puppy kitten
    """),
    ADJ_PERSON[:28] + _words("young old big small little brown black white"),
)


# Documents are also things; they get their own verbs (read, write, send, ...).
DOCUMENTS = _count_nouns("book letter card ticket newspaper map note")


THINGS = _Pool(
    DOCUMENTS
    + _count_nouns("""
        box cup key bag bottle glass plate bowl spoon fork knife/knives pen watch hat coat shirt
        shoe sock umbrella basket ball toy lamp clock phone camera radio chair picture photo jacket
        dress computer laptop car bicycle boat
    """),
    ADJ_THING,
)


FOOD = _Pool(
    _count_nouns("""
        apple banana orange lemon pear potato/potatoes tomato/tomatoes carrot onion egg cake cookie
        sandwich pizza
    """)
    + _mass_nouns("""
        bread rice soup cheese milk tea coffee juice water butter sugar salt honey meat chocolate
        pasta
    """),
    ADJ_FOOD,
)


ABSTRACT = _Pool(
    _mass_nouns("""
        idea plan story problem question answer reason decision dream secret truth news advice
        history music art science weather nature beauty health love hope mistake lesson price
        choice chance future language message report song joke change project money homework
    """),
    ADJ_ABSTRACT,
)


EVENTS = _Pool(
    _count_nouns("""
        meeting party game match concert wedding exam class show film movie dinner lunch
        breakfast trip holiday
    """),
    _words("long short big small important boring exciting wonderful terrible early late quiet"),
)


VEHICLES = _words("train bus plane ship ferry flight")


# Places with the preposition that sounds natural before them ("on the beach", "at the zoo").
_PLACE_SPECS = _words("""
    house:in garden:in kitchen:in park:in school:at market:at station:at library:in church:in
    hospital:in office:in bank:at shop:in store:in museum:in beach:on river:by lake:by
    forest:in mountain:on village:in city:in town:in bridge:on road:on street:on farm:on
    hotel:at restaurant:at cafe:at airport:at island:on bedroom:in bathroom:in theater:at
    zoo:at playground:in bakery:at
""")


PLACES = tuple(tuple(spec.split(":")) for spec in _PLACE_SPECS)  # (noun, preposition)


PLACE_NOUNS = tuple(noun for noun, _ in PLACES)


SURFACES = _words("table desk shelf sofa bed floor chair cupboard drawer counter")


# Things one looks at rather than handles ("she painted the old gate").
SCENERY = _Pool(
    _count_nouns("tree flower window door wall roof fence gate cloud star")
    + _mass_nouns("sky sun moon"),
    _words("old tall small bright dark beautiful broken red white green strange lovely"),
)


ADJ_SOUND = _words("lovely loud quiet strange beautiful terrible wonderful")


ADVERBS_MANNER = _words("""
    quickly slowly carefully quietly loudly happily sadly gently suddenly politely calmly softly
    badly easily warmly clearly safely well
""")


ADVERBS_FREQUENCY = _words("always never often sometimes usually rarely")


ADVERBS_DEGREE = _words("very really quite too extremely rather so")


DAYS = _words("monday tuesday wednesday thursday friday saturday sunday")


MONTHS = _words("""
    january february march april may june july august september october november december
""")


SEASONS = _words("spring summer autumn winter")


_PERIODS = _words("week month year weekend") + SEASONS + DAYS  # after "last", "next", "every"


_IRREGULAR_VERBS = _words("""
    bring/brought break/broke buy/bought come/came/coming cost/cost cut/cut/cutting
    drive/drove/driving eat/ate feed/fed feel/felt find/found fly/flew forget/forgot/forgetting
    give/gave/giving go/went hear/heard keep/kept leave/left/leaving lose/lost/losing
    make/made/making meet/met pay/paid put/put/putting read/read run/ran/running see/saw
    sell/sold send/sent sing/sang sit/sat/sitting sleep/slept swim/swam/swimming teach/taught
    tell/told understand/understood write/wrote/writing take/took/taking drop/dropped/dropping
    plan/planned/planning stop/stopped/stopping
""")


# States, not actions: "she is wanting" sounds wrong, so these never take -ing.
_STATIVE = _words("want need like love hate understand prefer cost seem sound")


V_HANDLE = _words("""
    take carry find lose drop open close clean wash fix break paint make keep move want need
    like use bring send buy sell
""")


V_FOOD = _words("eat cut cook bake taste like love hate prefer smell want buy")


V_DOC = _words("read write send find keep lose")


V_PERSON = _words("""
    meet call visit help remind warn teach pay join miss hear see watch ask answer
""")


V_SCENERY = _words("see watch paint")


V_ANIMAL = _words("feed watch find wash help")


V_ABSTRACT = _words("""
    discuss explain understand remember forget change finish start enjoy
""")


V_EVENT = _words("attend plan cancel enjoy join miss leave")


V_INTRANS = _words("""
    sleep arrive laugh cry run walk swim dance sing wait sit travel work play listen talk stay
    study live stop
""")


V_MOVE = _words("go walk drive run fly travel move return come swim")


V_PLACE = _words("put leave keep drop")


V_DITRANS = _words("give send show sell bring buy")


# Only used by fixed templates ("the train leaves at", "the soup tastes salty", ...).
V_TEMPLATE = _words("look seem feel sound taste cost end open close tell")


@dataclass(frozen=True)
class VerbForms:
    """The inflections the grammar uses; all of them are in ASR_VOCABULARY."""

    base: str
    s: str
    past: str
    ing: str | None  # None for stative verbs


def _verb_forms(spec: str) -> VerbForms:
    base, _, rest = spec.partition("/")
    past, _, ing = rest.partition("/")
    if base.endswith(("s", "x", "z", "ch", "sh", "o")):
        s = base + "es"
    elif base.endswith("y") and base[-2] not in "aeiou":
        s = base[:-1] + "ies"
    else:
        s = base + "s"
    if not past:
        if base.endswith("e"):
            past = base + "d"
        elif base.endswith("y") and base[-2] not in "aeiou":
            past = base[:-1] + "ied"
        else:
            past = base + "ed"
    if not ing:
        if base.endswith("ie"):
            ing = base[:-2] + "ying"
        elif base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
            ing = base[:-1] + "ing"
        else:
            ing = base + "ing"
    return VerbForms(base, s, past, None if base in _STATIVE else ing)


# Verb classes, keyed by what has to follow the verb (see `_object`).
_KIND_VERBS = {
    "handle": V_HANDLE,
    "food": V_FOOD,
    "doc": V_DOC,
    "person": V_PERSON,
    "animal": V_ANIMAL,
    "scenery": V_SCENERY,
    "abstract": V_ABSTRACT,
    "event": V_EVENT,
    "intrans": V_INTRANS,
    "move": V_MOVE,
    "place": V_PLACE,
    "ditrans": V_DITRANS,
}


def _build_verbs() -> dict[str, VerbForms]:
    specs = {spec.partition("/")[0]: spec for spec in _IRREGULAR_VERBS}
    groups = (*_KIND_VERBS.values(), V_TEMPLATE)
    return {base: _verb_forms(specs.get(base, base)) for group in groups for base in group}


VERBS = _build_verbs()
