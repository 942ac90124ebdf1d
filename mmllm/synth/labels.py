"""SynthDASB's classification content: the unknown words of keyword spotting, intents
(action, object, location) with their phrasings, and emotion sentences. The label sets
shared with real corpora live in `mmllm.corpus.labels`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mmllm.synth.lexicon import _words

# The 25 auxiliary words of Speech Commands v2 that stand in for "unknown".
KS_UNKNOWN_WORDS = _words("""
    backward bed bird cat dog eight five follow forward four happy house learn marvin nine one
    seven sheila six three tree two visual wow zero
""")


@dataclass(frozen=True)
class Intent:
    """A Fluent-Speech-Commands-style intent; `label` is its class name."""

    action: str
    object: str
    location: str = "none"

    @property
    def label(self) -> str:
        return f"{self.action}_{self.object}_{self.location}"


_ROOMS = ("none", "kitchen", "bedroom", "washroom", "living_room")


_LANGUAGES = ("none", "chinese", "korean", "english", "german", "spanish")


INTENTS: tuple[Intent, ...] = (
    *(Intent(action, "lights", room) for action in ("activate", "deactivate") for room in _ROOMS),
    *(Intent(action, "heat", room) for action in ("increase", "decrease") for room in _ROOMS),
    *(Intent(action, obj) for action in ("activate", "deactivate") for obj in ("lamp", "music")),
    Intent("increase", "volume"),
    Intent("decrease", "volume"),
    *(Intent("bring", obj) for obj in ("newspaper", "juice", "socks", "shoes")),
    *(Intent("change_language", language) for language in _LANGUAGES),
)


# "{in}" becomes " in the kitchen" (or nothing when there is no location); templates with
# "{room}" only apply when there is a location. "{x}" is the object phrase or language.
def _alternatives(text: str) -> tuple[str, ...]:
    return tuple(" ".join(alt.split()) for alt in text.split("|"))


_IC_TEMPLATES = {
    ("activate", "lights"): _alternatives("""
        turn on the lights{in} | switch on the lights{in} | turn the lights on{in} | lights on{in}
        | put the lights on{in} | turn on the {room} lights | {room} lights on please
    """),
    ("deactivate", "lights"): _alternatives("""
        turn off the lights{in} | switch off the lights{in} | turn the lights off{in}
        | lights off{in} | kill the lights{in} | turn off the {room} lights
        | {room} lights off please
    """),
    ("increase", "heat"): _alternatives("""
        turn up the heat{in} | increase the temperature{in} | make it warmer{in}
        | it's too cold{in} | raise the heating{in} | heat up the {room} | make the {room} warmer
    """),
    ("decrease", "heat"): _alternatives("""
        turn down the heat{in} | decrease the temperature{in} | make it cooler{in}
        | it's too hot{in} | lower the heating{in} | cool down the {room} | make the {room} cooler
    """),
    ("activate", "lamp"): _alternatives("""
        turn on the lamp | switch on the lamp | turn the lamp on | lamp on please | put the lamp on
    """),
    ("deactivate", "lamp"): _alternatives("""
        turn off the lamp | switch off the lamp | turn the lamp off | lamp off please
        | shut off the lamp
    """),
    ("activate", "music"): _alternatives("""
        play the music | play some music | turn on the music | put on some music | start the music
        | music on please
    """),
    ("deactivate", "music"): _alternatives("""
        stop the music | turn off the music | pause the music | switch off the music
        | turn the music off | music off please
    """),
    ("increase", "volume"): _alternatives("""
        turn up the volume | increase the volume | volume up | make it louder | louder please
        | i can't hear anything
    """),
    ("decrease", "volume"): _alternatives("""
        turn down the volume | decrease the volume | volume down | make it quieter
        | quieter please | it's too loud
    """),
    ("bring", "item"): _alternatives("""
        bring me {x} | get me {x} | fetch {x} | i need {x} | can you bring me {x} | go and get {x}
    """),
    ("change_language", "language"): _alternatives("""
        change the language to {x} | switch the language to {x} | set the language to {x}
        | use {x} | switch to {x} | i want to use {x}
    """),
    ("change_language", "none"): _alternatives("""
        change the language | switch the language | use a different language
        | i want another language | change language
    """),
}


_IC_ITEMS = dict(newspaper="the newspaper", juice="some juice", socks="my socks", shoes="my shoes")


def ic_phrasings(intent: Intent) -> tuple[str, ...]:
    """All the ways SynthDASB words `intent`: at least 3, distinct, never shared between
    intents (a located intent always names its room, an unlocated one never does)."""
    if intent not in INTENTS:
        raise ValueError(f"unknown intent: {intent.label}")
    action, obj = intent.action, intent.object
    if obj in _IC_ITEMS:
        key = (action, "item")
    elif action == "change_language" and obj != "none":
        key = (action, "language")
    else:
        key = (action, obj)
    room = intent.location.replace("_", " ")
    where = "" if intent.location == "none" else f" in the {room}"
    x = _IC_ITEMS.get(obj, obj)
    return tuple(
        template.format(x=x, room=room, **{"in": where})
        for template in _IC_TEMPLATES[key]
        if intent.location != "none" or "{room}" not in template
    )


def ic_utterance(intent: Intent, rng: random.Random) -> str:
    """One phrasing of `intent`, chosen by `rng`."""
    return rng.choice(ic_phrasings(intent))


ER_EMOTIONS = ("neutral", "happy", "sad", "angry")


ER_SENTENCES = tuple(
    " ".join(line.split())
    for line in """
    the meeting starts at ten in the morning
    i put the keys on the kitchen table
    the bus stops at the end of the street
    we are going to the market on saturday
    she left the box next to the door
    the train arrives in about twenty minutes
    he read the letter twice before dinner
    they moved the chairs into the other room
    the shop closes at six on sundays
    my brother called me this afternoon
    the report is on the second shelf
    we will paint the fence next week
    there is a car parked outside the house
    the children walked home after school
    i have to answer this message today
    the window in the hall is open
    she bought a new coat last week
    the package came in the morning
    he sat down at the end of the table
    we talked about it on the phone
    the dog is sleeping in the garden
    the lights in the office are on
    i will see you at the station
    they finished the work on friday
    the water in the kettle is warm
    the doctor said she would call back
    i found your book under the sofa
    the flight was moved to tuesday
    we drove to the lake this morning
    he is waiting for you downstairs
    the cat sat on the window ledge
    my sister lives in a small town
    the library opens again on monday
    i wrote the address on a card
    they are building a new bridge
    the rain stopped a few minutes ago
    she always takes the early train
    we need to buy more bread
    the clock on the wall is slow
    he carried the bags up the stairs
    the teacher handed out the papers
    the plates are in the top cupboard
    i saw him at the corner shop
    the film lasts about two hours
    they sold the old car last year
    the garden gate is painted green
    my phone is on the kitchen counter
    we watched the news after dinner
    the guests will arrive at eight
    she turned off the radio
    the road to the village is closed
    he keeps his tools in the shed
    the letter arrived on thursday
    i left my umbrella at the office
    the kettle is next to the toaster
    our neighbors have a brown dog
    the museum is across the river
    the bakery sells fresh bread daily
    he moved to a new flat in march
    we have a meeting every monday
""".strip().splitlines()
)
