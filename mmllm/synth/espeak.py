"""eSpeak NG through ctypes: text -> 16 kHz waveform plus word timings, no download.

The `espeakng-loader` wheel ships `libespeak-ng.so` and its voice data. We drive the C
API directly in `AUDIO_OUTPUT_SYNCHRONOUS` mode: `espeak_Synth` returns once the whole
utterance has been passed to our callback, together with WORD events that carry each
word's start in milliseconds. Word ends are the last voiced frame before the next word
starts (eSpeak reports only starts).

The library keeps global state: `Espeak` loads it afresh for every utterance (so output
never depends on what was synthesized before) and is not thread-safe; the corpus builder
parallelises with processes.
"""

from __future__ import annotations

import _ctypes
import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from mmllm.audio.io import resample

# espeak_AUDIO_OUTPUT, espeak_EVENT_TYPE, espeak_PARAMETER and flag values from speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2


EVENT_LIST_TERMINATED, EVENT_WORD = 0, 1


PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE, PARAM_WORDGAP = 1, 2, 3, 4, 7


CHARS_UTF8 = 1


POS_CHARACTER = 1


INITIALIZE_DONT_EXIT = 0x8000


OUTPUT_SAMPLE_RATE = 16000


class EspeakEvent(ctypes.Structure):
    """espeak_EVENT (speak_lib.h); `id` is a union of int / char* / char[8]."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(EspeakEvent)
)


@dataclass(frozen=True)
class Voice:
    """One eSpeak rendering setup: language voice + variant + prosody parameters.

    pitch and pitch_range are eSpeak's 0..100 scales, rate is words per minute,
    volume 0..200 (100 = normal).
    """

    language: str = "en-us"
    variant: str = "m1"
    pitch: int = 50
    pitch_range: int = 50
    rate: int = 175
    volume: int = 100

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}"


@dataclass
class Utterance:
    wav: np.ndarray  # [T] float32 at 16 kHz
    words: list[dict]  # [{word, start, end}] in seconds


class Espeak:
    """libespeak-ng, loaded afresh for every utterance (use `get_espeak()`).

    eSpeak NG carries state from one utterance to the next (the pitch-flutter phase is a
    static inside wavegen.c that nothing resets), so in one long-lived instance the same
    text comes out a few samples different each time. Loading the library, synthesizing
    and unloading it (dlclose, so the next load starts from pristine static data) costs
    about a millisecond and makes every utterance a pure function of (text, voice).
    """

    def __init__(self) -> None:
        import espeakng_loader

        self.library_path = espeakng_loader.get_library_path()
        self.data_path = espeakng_loader.get_data_path().encode()

    @contextmanager
    def _fresh_library(self) -> Iterator[ctypes.CDLL]:
        lib = ctypes.CDLL(self.library_path)
        try:
            lib.espeak_Initialize.argtypes = [
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
            ]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_SetSynthCallback.argtypes = [SYNTH_CALLBACK]
            lib.espeak_Synth.argtypes = [
                ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
            ]  # fmt: skip
            lib.native_rate = lib.espeak_Initialize(
                AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path, INITIALIZE_DONT_EXIT
            )
            if lib.native_rate <= 0:
                raise RuntimeError(
                    f"espeak_Initialize failed (data path {self.data_path.decode()})"
                )
            yield lib
        finally:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)

    def synthesize(self, text: str, voice: Voice) -> Utterance:
        """Render `text` with `voice` -> 16 kHz float32 waveform and word timings."""
        chunks: list[np.ndarray] = []
        word_events: list[tuple[int, int]] = []  # (text_position, audio_ms)

        def on_audio(wav, num_samples, events) -> int:
            if num_samples > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
            i = 0
            while events[i].type != EVENT_LIST_TERMINATED:
                if events[i].type == EVENT_WORD:
                    word_events.append((events[i].text_position, events[i].audio_position))
                i += 1
            return 0  # 0 = continue synthesis

        callback = SYNTH_CALLBACK(on_audio)  # referenced until synthesis ends: C holds the pointer
        with self._fresh_library() as lib:
            lib.espeak_SetSynthCallback(callback)
            if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice.name!r}")
            for param, value in (
                (PARAM_RATE, voice.rate),
                (PARAM_PITCH, voice.pitch),
                (PARAM_RANGE, voice.pitch_range),
                (PARAM_VOLUME, voice.volume),
                (PARAM_WORDGAP, 0),
            ):
                lib.espeak_SetParameter(param, int(value), 0)
            data = text.encode("utf-8") + b"\0"
            status = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status} for text {text!r}")
            native_rate = lib.native_rate
        native = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        wav = resample(native.astype(np.float32) / 32768.0, native_rate, OUTPUT_SAMPLE_RATE)
        return Utterance(wav=wav, words=align_words(text, wav, word_events))


def align_words(text: str, wav: np.ndarray, word_events: list[tuple[int, int]]) -> list[dict]:
    """Time every word of `text`: start from its WORD event, end at its last voiced frame.

    eSpeak sometimes emits one event for a short chunk ("in the", "there were"); the
    words without an event share their chunk's span in proportion to their letters.
    """
    words, offsets, position = [], [], 0
    for word in text.split():
        position = text.index(word, position)
        words.append(word)
        offsets.append(position + 1)  # eSpeak text positions are 1-based
        position += len(word)
    if not words:
        return []
    starts: dict[int, float] = {}
    for text_position, audio_ms in word_events:
        # the event belongs to the last word starting at or before its text position
        index = max((i for i, o in enumerate(offsets) if o <= text_position), default=0)
        starts.setdefault(index, audio_ms / 1000.0)
    starts.setdefault(0, 0.0)
    duration = len(wav) / OUTPUT_SAMPLE_RATE
    active = _active_frames(wav)
    anchors = sorted(starts)
    for a, first in enumerate(anchors):
        last = anchors[a + 1] if a + 1 < len(anchors) else len(words)
        if last - first > 1:  # words first+1..last-1 had no event of their own
            span_end = (
                starts[last]
                if last < len(words)
                else _last_active_time(active, starts[first], duration)
            )
            letters = [len(w) for w in words[first:last]]
            cursor = starts[first]
            for k, count in enumerate(letters[:-1], start=first):
                cursor += (span_end - starts[first]) * count / sum(letters)
                starts[k + 1] = cursor
    aligned = []
    for i, word in enumerate(words):
        start = round(starts[i], 3)
        limit = starts[i + 1] if i + 1 < len(words) else duration
        aligned.append(
            {"word": word, "start": start, "end": round(_last_active_time(active, start, limit), 3)}
        )
    return aligned


FRAME_SECONDS = 0.01


def _active_frames(wav: np.ndarray, threshold_db: float = -40.0) -> np.ndarray:
    """Boolean [num_frames]: 10 ms frames within `threshold_db` of the loudest frame."""
    hop = int(OUTPUT_SAMPLE_RATE * FRAME_SECONDS)
    frames = len(wav) // hop
    if frames == 0:
        return np.zeros(0, bool)
    energy = np.square(wav[: frames * hop].reshape(frames, hop)).mean(axis=1) + 1e-12
    level = 10 * np.log10(energy)
    return level > level.max() + threshold_db


def _last_active_time(active: np.ndarray, start: float, limit: float) -> float:
    first, last = int(start / FRAME_SECONDS), min(int(limit / FRAME_SECONDS), len(active))
    voiced = np.flatnonzero(active[first:last])
    end = (first + voiced[-1] + 1) * FRAME_SECONDS if voiced.size else limit
    return float(min(max(end, start), limit))


_ESPEAK: Espeak | None = None


def get_espeak() -> Espeak:
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = Espeak()
    return _ESPEAK
