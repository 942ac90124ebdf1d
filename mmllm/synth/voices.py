"""Synthetic speakers and emotions for SynthDASB: who speaks, and how.

A speaker is an eSpeak NG rendering setup (language voice x variant x pitch x rate),
drawn deterministically from the seed. Each speaker has a role that decides which
splits may use it, so that test speakers never appear in any training split:

    sid    closed set for speaker identification (also the TTS speakers); train role
    train  the other training speakers (all tasks' train splits; SV training trials)
    valid  validation splits only
    test   test splits only (ASR, KS, IC, ER, SE, SS, SV test trials)

Emotions are a synthetic paralinguistic proxy rendered through prosody (pitch, pitch
range, rate and volume relative to the speaker's own voice), not human emotion.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from mmllm.synth.espeak import Voice

# English voices shipped with eSpeak NG (espeak-ng-data/lang/gmw), minus en-Shaw (Shavian script).
LANGUAGES = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)


# Human-sounding variants (espeak-ng-data/voices/!v); robotic, whispered and novelty ones are
# left out, and so are those with a `breath` setting (f2, f3, f5, Alicia, Reed, caleb,
# sandro): their breath noise reads state that survives reloading the library, so the same
# text renders differently from one call to the next, which would break reproducibility.
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f4",
    "Alex", "Andrea", "Andy", "Annie", "Denis", "Gene", "Hugo", "Jacky", "Lee", "Marco",
    "Mario", "Michael", "Mike", "adam", "anika", "antonio", "aunty", "belinda", "benjamin",
    "boris", "david", "ed", "edward", "grandma", "grandpa", "gustave", "ian", "iven",
    "john", "linda", "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy",
    "rob", "robert", "shelby", "steph", "travis", "klatt", "klatt2", "klatt3",
)  # fmt: skip


ROLES = ("sid", "train", "valid", "test")


SPLIT_ROLES = {"train": ("sid", "train"), "valid": ("valid",), "test": ("test",)}


# (pitch shift, pitch-range shift, rate factor, volume) per emotion, on eSpeak's scales.
# Keys are mmllm.synth.labels.ER_EMOTIONS.
EMOTION_PROSODY = {
    "neutral": (0, 0, 1.00, 100),
    "happy": (14, 30, 1.12, 115),
    "sad": (-12, -30, 0.78, 70),
    "angry": (6, 20, 1.18, 160),
}


@dataclass(frozen=True)
class Speaker:
    speaker_id: str
    role: str
    voice: Voice

    def to_json(self) -> dict:
        return {"speaker_id": self.speaker_id, "role": self.role, **asdict(self.voice)}


def speaker_pool(
    seed: int, num_speakers: int, num_sid: int, num_valid: int, num_test: int
) -> list[Speaker]:
    """Draw `num_speakers` distinct (language, variant, pitch, rate) speakers and assign roles.

    The first `num_sid` are the closed SID set, the last `num_test` the test speakers, the
    `num_valid` before them the validation speakers; the rest are other training speakers.
    """
    if num_sid + num_valid + num_test > num_speakers:
        raise ValueError(
            f"speaker pool: sid ({num_sid}) + valid ({num_valid}) + test ({num_test}) "
            f"exceed num_speakers ({num_speakers})"
        )
    rng = random.Random(f"speakers-{seed}")
    combos = [(lang, variant) for lang in LANGUAGES for variant in VARIANTS]
    rng.shuffle(combos)
    if num_speakers > len(combos):
        raise ValueError(
            f"speaker pool: at most {len(combos)} distinct voices, asked for {num_speakers}"
        )
    speakers = []
    for index, (language, variant) in enumerate(combos[:num_speakers]):
        if index < num_sid:
            role = "sid"
        elif index >= num_speakers - num_test:
            role = "test"
        elif index >= num_speakers - num_test - num_valid:
            role = "valid"
        else:
            role = "train"
        voice = Voice(
            language,
            variant,
            pitch=rng.randint(25, 75),
            pitch_range=rng.randint(35, 65),
            rate=rng.randint(145, 205),
        )
        speakers.append(Speaker(f"spk{index:03d}", role, voice))
    return speakers


def with_emotion(voice: Voice, emotion: str) -> Voice:
    """The speaker's voice with the prosody of `emotion` applied."""
    pitch, pitch_range, rate, volume = EMOTION_PROSODY[emotion]
    return Voice(
        voice.language,
        voice.variant,
        pitch=min(max(voice.pitch + pitch, 0), 100),
        pitch_range=min(max(voice.pitch_range + pitch_range, 0), 100),
        rate=round(voice.rate * rate),
        volume=volume,
    )
