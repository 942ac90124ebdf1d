"""The one row schema every corpus (SynthDASB and the real-corpus adapters) produces.

Columns (every task has all of them; unused ones are empty):

    id            str   unique within the corpus, e.g. "asr-train-000042"
    task          str   one of TASKS
    audio         Audio 16 kHz mono WAV (SynthDASB) or FLAC (converted corpora) bytes: the
                        task input (TTS: the target speech)
    text          str   transcript of `audio` ("" when there is no speech or no transcript)
    label         str   class label (KS/IC/ER/SID, SV "same"/"different"; "" otherwise)
    speaker       str   speaker of `audio` ("" for silence / mixtures, see ref_speakers)
    words         list  [{word, start, end}] seconds in `audio`, where speech and alignments exist
    refs          list  reference audio: SE [clean], SS [source1, source2], SV [enrollment]
    ref_speakers  list  speaker of each `refs` entry
    meta          str   JSON with task extras (snr_db, noise, emotion prosody, voice, ...)

Audio cells are `datasets.Audio(sampling_rate=16000, decode=False)`: stored WAV bytes,
decoded by `mmllm.audio.decode_audio_value` (datasets' own decoder needs torchcodec,
which does not load against torch 2.13 here). With torchcodec installed, a user can
`cast_column("audio", Audio(decode=True))` as usual.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Audio, Dataset, DatasetInfo, Features, List, Value

from mmllm.audio.io import encode_wav

SAMPLE_RATE = 16000


TASKS = ("asr", "ks", "ic", "sid", "sv", "er", "se", "ss", "tts")


AUDIO_ANSWER_TASKS = ("se", "ss", "tts")  # answered in audio (output-tokenizer codes)


SPLITS = ("train", "valid", "test")


AUDIO_FEATURE = Audio(sampling_rate=SAMPLE_RATE, decode=False)


FEATURES = Features(
    {
        "id": Value("string"),
        "task": Value("string"),
        "audio": AUDIO_FEATURE,
        "text": Value("string"),
        "label": Value("string"),
        "speaker": Value("string"),
        "words": List(
            {"word": Value("string"), "start": Value("float32"), "end": Value("float32")}
        ),
        "refs": List(AUDIO_FEATURE),
        "ref_speakers": List(Value("string")),
        "meta": Value("string"),
    }
)


COLUMNS = tuple(FEATURES)


def make_row(
    row_id: str,
    task: str,
    audio: np.ndarray | bytes,
    *,
    text: str = "",
    label: str = "",
    speaker: str = "",
    words: list[dict] | None = None,
    refs: list[np.ndarray | bytes] | None = None,
    ref_speakers: list[str] | None = None,
    meta: dict | None = None,
) -> dict:
    """Build one schema row; waveforms ([T] float32 at 16 kHz) are encoded to WAV bytes."""
    if task not in TASKS:
        raise ValueError(f"row {row_id}: unknown task {task!r} (expected one of {TASKS})")
    return {
        "id": row_id,
        "task": task,
        "audio": _audio_cell(audio),
        "text": text,
        "label": label,
        "speaker": speaker,
        "words": [
            {"word": w["word"], "start": float(w["start"]), "end": float(w["end"])}
            for w in words or []
        ],
        "refs": [_audio_cell(r) for r in refs or []],
        "ref_speakers": list(ref_speakers or []),
        "meta": json.dumps(meta or {}, sort_keys=True),
    }


def _audio_cell(audio: np.ndarray | bytes) -> dict:
    data = audio if isinstance(audio, (bytes, bytearray)) else encode_wav(audio, SAMPLE_RATE)
    return {"bytes": bytes(data), "path": None}


class RowWriter:
    """Schema rows -> one Arrow file on disk, a chunk at a time, so a corpus of any size is
    written without holding it: `write(rows)` per chunk, then `finish()` -> the Dataset,
    memory-mapped (or read into memory with `in_memory`), fingerprinted by its content like
    `rows_to_dataset`."""

    def __init__(self, path: str | Path, fingerprint_seed: str) -> None:
        from datasets.arrow_writer import ArrowWriter

        self.path = str(path)
        self.writer = ArrowWriter(features=FEATURES, path=self.path)
        self.digest = hashlib.sha256(fingerprint_seed.encode())

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            self.digest.update(row["id"].encode())
            self.digest.update(row["audio"]["bytes"])
        self.writer.write_table(pa.Table.from_pylist(rows, schema=FEATURES.arrow_schema))

    def finish(self, in_memory: bool = False) -> Dataset:
        from datasets.table import InMemoryTable, MemoryMappedTable

        self.writer.finalize()
        self.writer.close()
        table_type = InMemoryTable if in_memory else MemoryMappedTable
        return Dataset(
            table_type.from_file(self.path),
            info=DatasetInfo(features=FEATURES),
            fingerprint=self.digest.hexdigest()[:16],
        )


def rows_to_dataset(rows: list[dict], fingerprint_seed: str) -> Dataset:
    """Rows (from `make_row`) -> Dataset with FEATURES, built straight from Arrow.

    Bypasses `Dataset.from_dict`, whose Audio encoder needs torchcodec. The fingerprint is
    derived from `fingerprint_seed` and the content, so the same rows give the same bytes
    on disk (datasets would otherwise pick a random fingerprint).
    """
    table = pa.Table.from_pylist(rows, schema=FEATURES.arrow_schema)
    digest = hashlib.sha256(fingerprint_seed.encode())
    for row in rows:
        digest.update(row["id"].encode())
        digest.update(row["audio"]["bytes"])
    return Dataset(table, info=DatasetInfo(features=FEATURES), fingerprint=digest.hexdigest()[:16])
