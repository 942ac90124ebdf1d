"""Per-corpus adapters: how one row of a public speech corpus becomes schema rows.

An adapter is one small function from a `SourceRow` (a row of the source dataset, with
accessors whose errors name corpus, split, row and column) to a list of `Example`s, the
keyword arguments of `mmllm.corpus.schema.make_row` plus an optional id "suffix". It usually
returns one example; none drops the row (an emotion the task does not use), several split
it (long background-noise recordings cut into 1 s clips). `@register` records it in
`ADAPTERS` with the task it produces, the source columns it needs (each entry lists
alternative spellings, one must exist), the columns whose value identifies a row and its
default mapping from our splits to source split specs. Loading, split specs, row ids,
provenance metadata and chunking are `mmllm.corpora.convert`'s job, not the adapter's.

Adding a corpus, e.g. a hub copy with columns audio, sentence, client_id, path:

    @register(
        "my_corpus",
        "asr",
        columns=["audio", ("sentence", "text")],
        id_columns=["path"],
        default_splits={"train": "train", "valid": "validation", "test": "test"},
    )
    def _my_corpus(row: SourceRow) -> list[Example]:
        return [
            {
                "audio": row.audio("audio"),  # [T] float32, resampled to 16 kHz
                "text": row.text("sentence", "text"),
                "speaker": row.text("client_id", required=False),
                "meta": {"path": row.text("path", required=False)},
            }
        ]

then add `configs/corpora/my_corpus.yaml` (name, path, subset, splits) and a test in
tests/data/test_adapters.py that builds a tiny local copy with the corpus's own column
names and types and converts it with `load_corpus`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset

from mmllm.audio.io import AudioError, decode_audio_value
from mmllm.corpus.labels import KS_COMMANDS, KS_SILENCE, KS_UNKNOWN
from mmllm.corpus.schema import SAMPLE_RATE


class CorpusError(ValueError):
    """A corpus that cannot be loaded or converted; the message names corpus, path and row."""


@dataclasses.dataclass
class SplitSource:
    """One of our splits being converted: its source dataset and where it came from."""

    corpus: str
    split: str  # ours: train / valid / test
    spec: str  # the source split spec it was loaded from
    dataset: Dataset
    root: Path | None  # local directory relative audio paths are resolved against


class SourceRow:
    """A source row with accessors whose errors name corpus, split, row and column."""

    def __init__(
        self, values: dict[str, Any], index: int, source: SplitSource, id_columns: tuple[str, ...]
    ):
        self.values = values
        self.index = index
        self.source = source
        self.source_id = next(
            (
                str(values[c])
                for c in id_columns
                if isinstance(values.get(c), (str, int)) and values[c] != ""
            ),
            None,
        )

    def where(self, column: str | None = None) -> str:
        src = self.source
        text = f"corpus '{src.corpus}' split '{src.split}' (source '{src.spec}') row {self.index}"
        if self.source_id is not None:
            text += f" (id {self.source_id!r})"
        return text + (f" column '{column}'" if column else "")

    def column(self, *names: str) -> str | None:
        """The first of `names` this row has (alternative spellings across hub versions)."""
        return next((n for n in names if n in self.values), None)

    def get(self, *names: str, required: bool = True) -> Any:
        """Value of the first present column of `names`; None is an error when required."""
        name = self.column(*names)
        value = None if name is None else self.values[name]
        if value is None and required:
            raise CorpusError(f"{self.where(name or '/'.join(names))}: missing value")
        return value

    def text(self, *names: str, required: bool = True) -> str:
        value = self.get(*names, required=required)
        return "" if value is None else str(value).strip()

    def label(self, *names: str) -> str:
        """A label as a string; ClassLabel integers become their names via int2str."""
        name = self.column(*names)
        value = self.get(*names)
        feature = (self.source.dataset.features or {}).get(name)
        if isinstance(feature, ClassLabel) and not isinstance(value, str):
            try:
                return feature.int2str(int(value))
            except (ValueError, IndexError) as err:
                raise CorpusError(f"{self.where(name)}: bad class index {value!r} ({err})") from err
        return str(value).strip()

    def audio(self, *names: str) -> np.ndarray:
        """Decode an audio cell ({'bytes', 'path'} or a path string) -> [T] float32 at 16 kHz."""
        name = self.column(*names) or "/".join(names)
        value = self.get(*names)
        if isinstance(value, str):  # a path column from metadata files
            path = Path(value).expanduser()
            if not path.is_absolute() and self.source.root is not None:
                path = self.source.root / path
            value = {"bytes": None, "path": str(path)}
        elif not isinstance(value, dict):
            raise CorpusError(
                f"{self.where(name)}: expected an audio cell, got {type(value).__name__}"
            )
        try:
            return decode_audio_value(value, target_sr=SAMPLE_RATE, name=self.where(name))
        except AudioError as err:
            raise CorpusError(str(err)) from err

    def audio_path(self, *names: str) -> str:
        """The file name stored with an audio cell ("" when there is none)."""
        value = self.values.get(self.column(*names) or "")
        if isinstance(value, dict):
            return value.get("path") or ""
        return value if isinstance(value, str) else ""


Example = dict[str, Any]  # make_row keyword arguments, plus an optional id "suffix"


@dataclasses.dataclass(frozen=True)
class Adapter:
    """How one corpus maps to the schema.

    columns: required source columns; each entry lists alternative names, one must exist.
    id_columns: columns whose value identifies a row (first present wins; else the index).
    convert: source row -> schema examples (usually one; none drops the row).
    """

    name: str
    task: str
    columns: tuple[tuple[str, ...], ...]
    id_columns: tuple[str, ...]
    default_splits: dict[str, str]
    convert: Callable[[SourceRow], list[Example]]


ADAPTERS: dict[str, Adapter] = {}


def register(name: str, task: str, columns, id_columns, default_splits):
    """Decorator: register `convert` as the adapter `name`."""

    def wrap(convert: Callable[[SourceRow], list[Example]]):
        cols = tuple((c,) if isinstance(c, str) else tuple(c) for c in columns)
        ADAPTERS[name] = Adapter(name, task, cols, tuple(id_columns), dict(default_splits), convert)
        return convert

    return wrap


def get_adapter(name: str) -> Adapter:
    """The registered adapter `name`; CorpusError lists the known ones otherwise."""
    adapter = ADAPTERS.get(name)
    if adapter is None:
        raise CorpusError(f"unknown corpus adapter {name!r}; expected one of {sorted(ADAPTERS)}")
    return adapter


# openslr/librispeech_asr (dataset card, configs clean / other / all): file, audio (16 kHz),
# text (upper case), speaker_id (int64), chapter_id (int64), id. Config "clean" has splits
# train.100, train.360, validation, test; config "all" names them train.clean.100, ...
@register(
    "librispeech",
    "asr",
    columns=["audio", "text", "speaker_id"],
    id_columns=["id"],
    default_splits={"train": "train.100", "valid": "validation", "test": "test"},
)
def _librispeech(row: SourceRow) -> list[Example]:
    meta = {"chapter_id": row.get("chapter_id", required=False)}
    return [
        {
            "audio": row.audio("audio"),
            "text": " ".join(row.text("text").lower().split()),
            "speaker": str(row.get("speaker_id")),
            "meta": meta,
        }
    ]


# google/speech_commands (dataset card, config v0.02, parquet since the conversion PR #5):
# file, audio (16 kHz), label (ClassLabel: 35 words + "_silence_"), is_unknown (bool),
# speaker_id (string, None for silence), utterance_id (int8). The "_silence_" class holds
# long background-noise recordings; like SpeechBrain's GSC preparation they are cut into
# 1 s clips (a shorter tail is dropped). Labels follow the DASB / SUPERB 12-class setup:
# 10 commands + unknown + silence (SynthDASB's KS task, mmllm.synth.labels.KS_LABELS).
KS_CLIP_SAMPLES = SAMPLE_RATE  # background-noise "_silence_" files are cut into 1 s clips


@register(
    "speech_commands",
    "ks",
    columns=["audio", "label"],
    id_columns=["file"],
    default_splits={"train": "train", "valid": "validation", "test": "test"},
)
def _speech_commands(row: SourceRow) -> list[Example]:
    word = row.label("label")
    wav = row.audio("audio")
    speaker = row.text("speaker_id", required=False)
    if word == KS_SILENCE:
        if len(wav) <= 1.5 * KS_CLIP_SAMPLES:
            return [{"audio": wav, "label": KS_SILENCE}]
        clips = range(len(wav) // KS_CLIP_SAMPLES)
        return [
            {
                "audio": wav[k * KS_CLIP_SAMPLES : (k + 1) * KS_CLIP_SAMPLES],
                "label": KS_SILENCE,
                "suffix": f"-seg{k:03d}",
                "meta": {"segment": k, "segment_start_s": float(k)},
            }
            for k in clips
        ]
    label = word if word in KS_COMMANDS else KS_UNKNOWN
    return [
        {"audio": wav, "text": word, "label": label, "speaker": speaker, "meta": {"word": word}}
    ]


# Fluent Speech Commands (Lugosch et al. 2019; no official hub copy, its licence needs a
# sign-up). Columns of the release's data/{train,valid,test}_data.csv: path (wav relative to
# the dataset root), speakerId, transcription, action, object, location; community hub
# copies carry the same columns with an `audio` column. Label = "action_object_location".
@register(
    "fluent_speech_commands",
    "ic",
    columns=[("audio", "path"), "action", "object", "location"],
    id_columns=["path"],
    default_splits={
        "train": "data/train_data.csv",
        "valid": "data/valid_data.csv",
        "test": "data/test_data.csv",
    },
)
def _fluent_speech_commands(row: SourceRow) -> list[Example]:
    parts = [row.text(c) for c in ("action", "object", "location")]
    return [
        {
            "audio": row.audio("audio", "path"),
            "text": row.text("transcription", required=False),
            "label": "_".join(parts),
            "speaker": row.text("speakerId", "speaker_id", required=False),
            "meta": dict(zip(("action", "object", "location"), parts, strict=True)),
        }
    ]


# SLURP (Bastianelli et al. 2020). Community hub copies, e.g. qmeeus/slurp (dataset card):
# slurp_id, sentence, annotation, intent (ClassLabel), audio, splits train /
# train_synthetic / devel / test. Other copies spell the transcript `text` or `transcript`
# and may only have scenario + action, whose "scenario_action" is the SLURP intent.
@register(
    "slurp",
    "ic",
    columns=["audio", ("intent", "scenario")],
    id_columns=["recording", "file", "id", "slurp_id"],
    default_splits={"train": "train", "valid": "devel", "test": "test"},
)
def _slurp(row: SourceRow) -> list[Example]:
    if row.column("intent"):
        intent = row.label("intent")
    else:
        intent = f"{row.label('scenario')}_{row.label('action')}"
    return [
        {
            "audio": row.audio("audio"),
            "text": row.text("sentence", "text", "transcript", "transcription", required=False),
            "label": intent,
            "speaker": row.text("speaker_id", "user_id", required=False),
        }
    ]


# VoxCeleb1 identification (Nagrani et al. 2017). No hub copy has the audio with the
# identification split: macabdul9/VoxCeleb_test (audio, id, speaker_id) holds only the
# 4,874-utterance verification test set. So besides datasets with an audio column and a
# speaker column (speaker_id, spk_id, speaker or label), this reads SpeechBrain-style split
# CSVs over the extracted official release, as in yangwang825/vox1-iden-full (ID, duration,
# wav = "<speaker>/<video>/<n>.wav" relative to the wav root, start, stop [samples],
# spk_id). Without a speaker column the "id1xxxx" speaker is taken from the audio path.
_VOX_SPEAKER = re.compile(r"id1\d{4}")


@register(
    "voxceleb1",
    "sid",
    columns=[("audio", "wav", "path")],
    id_columns=["ID", "id", "file", "wav", "path"],
    default_splits={"train": "train", "valid": "validation", "test": "test"},
)
def _voxceleb1(row: SourceRow) -> list[Example]:
    column = row.column("speaker_id", "spk_id", "speaker", "label")
    if column is not None:
        speaker = row.label(column)
    else:
        match = _VOX_SPEAKER.search(row.audio_path("audio", "wav", "path") or row.source_id or "")
        if match is None:
            raise CorpusError(
                f"{row.where('audio')}: no speaker column (speaker_id, spk_id, speaker, label) "
                "and no VoxCeleb speaker id (id1xxxx) in the audio path"
            )
        speaker = match.group(0)
    wav = row.audio("audio", "wav", "path")
    start, stop = row.get("start", required=False), row.get("stop", required=False)
    if start is not None or stop is not None:  # a segment, in samples at 16 kHz
        wav = wav[int(start or 0) : None if stop is None else int(stop)]
        if wav.size == 0:
            raise CorpusError(f"{row.where('start')}: empty segment [{start}:{stop}]")
    return [{"audio": wav, "label": speaker, "speaker": speaker}]


# IEMOCAP (Busso et al. 2008), e.g. Zahra99/IEMOCAP_Audio (dataset card): audio (16 kHz),
# label (ClassLabel ang / hap / neu / sad, excited already merged), one split per recording
# session, named "session" + its number (`iemocap_sessions`).
# Other copies use `emotion` or `major_emotion` with full names; exc/excited -> happy and
# rows of the other emotions (frustration, surprise, ...) are dropped, as in DASB's 4 classes.
IEMOCAP_EMOTIONS = {
    "neu": "neutral",
    "neutral": "neutral",
    "hap": "happy",
    "happy": "happy",
    "happiness": "happy",
    "exc": "happy",
    "excited": "happy",
    "sad": "sad",
    "sadness": "sad",
    "ang": "angry",
    "angry": "angry",
    "anger": "angry",
}


def iemocap_sessions(*numbers: int) -> str:
    """The split spec of IEMOCAP's recording sessions `numbers`, as the dataset names them:
    sessions one and two -> the two split names joined by "+"."""
    return "+".join(f"session{number}" for number in numbers)


_IEMOCAP_UTTERANCE = re.compile(r"(Ses0\d)[FM]_\w*?_([FM])\d+")


@register(
    "iemocap",
    "er",
    columns=["audio", ("label", "emotion", "major_emotion")],
    id_columns=["file", "id", "path"],
    # speaker-independent: recording sessions one to three train, four valid, five test
    default_splits={
        "train": iemocap_sessions(1, 2, 3),
        "valid": iemocap_sessions(4),
        "test": iemocap_sessions(5),
    },
)
def _iemocap(row: SourceRow) -> list[Example]:
    raw = row.label("label", "emotion", "major_emotion")
    emotion = IEMOCAP_EMOTIONS.get(raw.lower())
    if emotion is None:
        return []
    speaker = row.text("speaker", "speaker_id", required=False)
    if not speaker:
        match = _IEMOCAP_UTTERANCE.search(row.source_id or row.audio_path("audio"))
        speaker = f"{match.group(1)}{match.group(2)}" if match else ""
    return [
        {
            "audio": row.audio("audio"),
            "text": row.text("transcription", "text", required=False),
            "label": emotion,
            "speaker": speaker,
            "meta": {"source_emotion": raw},
        }
    ]


# VoiceBank-DEMAND (Valentini-Botinhao et al. 2016), e.g. JacobLinCool/VoiceBank-DEMAND-16k
# (dataset card): id ("p226_001"), clean, noisy (16 kHz audio); splits train (11,572) and
# test (824). Input = noisy, reference = clean; the speaker is the id's "pNNN" prefix.
_VCTK_SPEAKER = re.compile(r"^(p\d{3})")


@register(
    "voicebank_demand",
    "se",
    columns=["noisy", "clean"],
    id_columns=["id"],
    default_splits={"train": "train[:95%]", "valid": "train[95%:]", "test": "test"},
)
def _voicebank_demand(row: SourceRow) -> list[Example]:
    match = _VCTK_SPEAKER.match(row.source_id or "")
    speaker = match.group(1) if match else ""
    return [
        {
            "audio": row.audio("noisy"),
            "text": row.text("text", "transcript", required=False),
            "speaker": speaker,
            "refs": [row.audio("clean")],
            "ref_speakers": [speaker],
        }
    ]


# Libri2Mix (Cosentino et al. 2020) has no loadable hub copy; it is generated locally with
# JorisCos/LibriMix. Its metadata CSVs (Libri2Mix/wav16k/min/metadata/
# mixture_{train-100,dev,test}_mix_clean.csv, see create_librimix_from_metadata.py) have
# mixture_ID ("<spk>-<chapter>-<utt>_<spk>-<chapter>-<utt>"), mixture_path, source_1_path,
# source_2_path, length. Datasets with audio columns mixture / s1 / s2 work too.
_LIBRISPEECH_UTTERANCE = re.compile(r"\d+-\d+-\d+")  # <speaker>-<chapter>-<utterance>


@register(
    "libri2mix",
    "ss",
    columns=[
        ("mixture", "mix", "mix_clean", "mixture_path"),
        ("s1", "source_1", "source_1_path"),
        ("s2", "source_2", "source_2_path"),
    ],
    id_columns=["mixture_ID", "id"],
    default_splits={
        "train": "metadata/mixture_train-100_mix_clean.csv",
        "valid": "metadata/mixture_dev_mix_clean.csv",
        "test": "metadata/mixture_test_mix_clean.csv",
    },
)
def _libri2mix(row: SourceRow) -> list[Example]:
    utterances = (row.source_id or "").split("_")
    speakers = [u.split("-")[0] if _LIBRISPEECH_UTTERANCE.fullmatch(u) else "" for u in utterances]
    if len(speakers) != 2:
        speakers = ["", ""]
    return [
        {
            "audio": row.audio("mixture", "mix", "mix_clean", "mixture_path"),
            "refs": [
                row.audio("s1", "source_1", "source_1_path"),
                row.audio("s2", "source_2", "source_2_path"),
            ],
            "ref_speakers": speakers,
        }
    ]


# keithito/lj_speech (dataset card): id, audio (22,050 Hz), file, text, normalized_text;
# one split, train (13,100). Its main branch is a loading script again, so the config uses
# the parquet export (revision refs/convert/parquet). Text = normalized_text.
@register(
    "ljspeech",
    "tts",
    columns=["audio", ("normalized_text", "text")],
    id_columns=["id"],
    default_splits={"train": "train[:90%]", "valid": "train[90%:95%]", "test": "train[95%:]"},
)
def _ljspeech(row: SourceRow) -> list[Example]:
    return [
        {
            "audio": row.audio("audio"),
            "text": row.text("normalized_text", "text"),
            "speaker": "LJ",
            "meta": {"raw_text": row.text("text", required=False)},
        }
    ]
