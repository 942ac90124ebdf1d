"""Corpus adapters: tiny local copies of each public corpus, with its own column names and
types, converted through `load_corpus` exactly as the hub versions would be.

Audio columns are stored like the hub's: `Audio(sampling_rate=..)` features (decode=True)
over WAV bytes, written from Arrow so that no torchcodec is needed to build them. The
helpers below build such copies; tests/data/test_corpora.py (loading, configs, errors)
uses them too.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
from datasets import Audio, ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Value

from mmllm.audio.io import decode_audio_value
from mmllm.corpora.adapters import ADAPTERS, CorpusError
from mmllm.corpora.convert import CorpusConfig, load_corpus
from mmllm.corpus.labels import KS_COMMANDS
from mmllm.corpus.schema import FEATURES, TASKS

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "corpora"

# google/speech_commands v0.02 label order (dataset card)
# fmt: off
SPEECH_COMMANDS_V2 = [
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "zero", "one", "two",
    "three", "four", "five", "six", "seven", "eight", "nine", "bed", "bird", "cat", "dog", "happy",
    "house", "marvin", "sheila", "tree", "wow", "backward", "forward", "follow", "learn", "visual",
    "_silence_",
]
# fmt: on


# ----------------------------------------------------------------------------- helpers


def wav_bytes(seconds: float, sr: int = 16000, freq: float = 440.0) -> bytes:
    t = np.arange(int(round(seconds * sr))) / sr
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * freq * t), sr, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def cell(seconds: float, sr: int = 16000, path: str | None = None, freq: float = 440.0) -> dict:
    return {"bytes": wav_bytes(seconds, sr, freq), "path": path}


def table_dataset(columns: dict[str, list], features: Features) -> Dataset:
    """A Dataset built straight from Arrow (Audio features over WAV bytes, no encoding)."""
    table = pa.Table.from_pydict(columns, schema=features.arrow_schema)
    return Dataset(table, info=DatasetInfo(features=features))


def save(tmp_path: Path, splits: dict[str, Dataset], name: str = "corpus") -> Path:
    path = tmp_path / name
    DatasetDict(splits).save_to_disk(str(path))
    return path


def load(name: str, path: Path | str, **kwargs) -> DatasetDict:
    return load_corpus(CorpusConfig(name=name, path=str(path), **kwargs), progress=False)


def samples(audio_cell: dict) -> tuple[int, int]:
    """(sample rate, number of samples) of a schema audio cell."""
    info = sf.info(io.BytesIO(audio_cell["bytes"]))
    return info.samplerate, info.frames


def check_schema(corpus: DatasetDict, task: str, splits=("train", "valid", "test")) -> None:
    assert list(corpus) == list(splits)
    for split in corpus.values():
        assert split.features == FEATURES
        assert set(split["task"]) <= {task}
        assert len(set(split["id"])) == len(split)
        for row in split:
            assert samples(row["audio"])[0] == 16000
            for ref in row["refs"]:
                assert samples(ref)[0] == 16000


def write_wav(path: Path, seconds: float, sr: int, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(seconds, sr, freq))
    return path


def speech_commands_split(words: list[str], seconds: list[float], prefix: str = "") -> Dataset:
    features = Features(
        {
            "file": Value("string"),
            "audio": Audio(sampling_rate=16000),
            "label": ClassLabel(names=SPEECH_COMMANDS_V2),
            "is_unknown": Value("bool"),
            "speaker_id": Value("string"),
            "utterance_id": Value("int8"),
        }
    )
    files = [f"{w}/{prefix}{i:08x}_nohash_0.wav" for i, w in enumerate(words)]
    silence = [w == "_silence_" for w in words]
    return table_dataset(
        {
            "file": files,
            "audio": [cell(s, 16000, f) for s, f in zip(seconds, files, strict=True)],
            "label": [SPEECH_COMMANDS_V2.index(w) for w in words],
            "is_unknown": [
                w not in KS_COMMANDS and not s for w, s in zip(words, silence, strict=True)
            ],
            "speaker_id": [None if s else f"{i:08x}" for i, s in enumerate(silence)],
            "utterance_id": [0] * len(words),
        },
        features,
    )


# ----------------------------------------------------------------------------- adapters


def test_librispeech_lowercases_text_and_resamples(tmp_path):
    features = Features(
        {
            "file": Value("string"),
            "audio": Audio(sampling_rate=16000),
            "text": Value("string"),
            "speaker_id": Value("int64"),
            "chapter_id": Value("int64"),
            "id": Value("string"),
        }
    )

    def split(prefix: str, sr: int) -> Dataset:
        ids = [f"{prefix}-1240-000{i}" for i in range(2)]
        return table_dataset(
            {
                "file": [f"{i}.flac" for i in ids],
                "audio": [cell(0.5, sr, f"{i}.flac") for i in ids],
                "text": ["HELLO  WORLD", "IT'S A TEST"],
                "speaker_id": [int(prefix)] * 2,
                "chapter_id": [1240, 1240],
                "id": ids,
            },
            features,
        )

    path = save(
        tmp_path,
        {
            "train.100": split("103", 16000),
            "validation": split("84", 8000),
            "test": split("61", 16000),
        },
    )
    corpus = load("librispeech", path, subset="clean")
    check_schema(corpus, "asr")
    row = corpus["train"][0]
    assert row["id"] == "librispeech-train-103-1240-0000"
    assert (row["task"], row["text"], row["speaker"], row["label"]) == (
        "asr",
        "hello world",
        "103",
        "",
    )
    assert corpus["train"][1]["text"] == "it's a test"
    assert json.loads(row["meta"]) == {
        "chapter_id": 1240,
        "source_id": "103-1240-0000",
        "source_index": 0,
        "source_split": "train.100",
    }
    assert samples(row["audio"]) == (16000, 8000)
    assert samples(corpus["valid"][0]["audio"]) == (16000, 8000)  # 0.5 s at 8 kHz -> 16 kHz
    assert corpus["valid"][0]["speaker"] == "84"


def test_speech_commands_twelve_classes_and_silence_clips(tmp_path):
    path = save(
        tmp_path,
        {
            "train": speech_commands_split(["yes", "bed", "_silence_"], [1.0, 1.0, 3.2]),
            "validation": speech_commands_split(["visual", "stop"], [1.0, 0.8]),
            "test": speech_commands_split(["_silence_", "go", "marvin"], [1.0, 1.0, 1.0]),
        },
    )
    corpus = load("speech_commands", path, subset="v0.02")
    check_schema(corpus, "ks")
    train = corpus["train"]
    assert train["label"] == ["yes", "_unknown_", "_silence_", "_silence_", "_silence_"]
    assert train["text"] == ["yes", "bed", "", "", ""]
    assert train["speaker"] == ["00000000", "00000001", "", "", ""]
    # the 3.2 s background-noise recording becomes three 1 s clips (tail dropped)
    assert train["id"][2:] == [
        f"speech_commands-train-silence__00000002_nohash_0-seg{k:03d}" for k in range(3)
    ]
    assert [samples(a) for a in train["audio"][2:]] == [(16000, 16000)] * 3
    assert json.loads(train["meta"][3])["segment"] == 1
    assert corpus["valid"]["label"] == ["_unknown_", "stop"]
    assert corpus["test"]["label"] == [
        "_silence_",
        "go",
        "_unknown_",
    ]  # a 1 s silence clip stays whole


def test_fluent_speech_commands_release_layout(tmp_path):
    """The release's own CSVs (relative wav paths) are the default splits."""
    root = tmp_path / "fluent_speech_commands_dataset"
    rows = {
        "train": [
            ("spkA", "Turn on the lights", "activate", "lights", "kitchen"),
            ("spkB", "Louder", "increase", "volume", "none"),
        ],
        "valid": [("spkC", "Stop the music", "deactivate", "music", "none")],
        "test": [("spkD", "Bring me my shoes", "bring", "shoes", "none")],
    }
    for split, items in rows.items():
        lines = [",path,speakerId,transcription,action,object,location"]
        for i, (spk, text, action, obj, loc) in enumerate(items):
            rel = f"wavs/speakers/{spk}/{split}-{i}.wav"
            write_wav(root / rel, 0.4, 16000 if split != "test" else 8000)
            lines.append(f"{i},{rel},{spk},{text},{action},{obj},{loc}")
        (root / "data").mkdir(exist_ok=True)
        (root / "data" / f"{split}_data.csv").write_text("\n".join(lines) + "\n")
    corpus = load("fluent_speech_commands", root)
    check_schema(corpus, "ic")
    row = corpus["train"][0]
    assert (row["label"], row["text"], row["speaker"]) == (
        "activate_lights_kitchen",
        "Turn on the lights",
        "spkA",
    )
    assert row["id"] == "fluent_speech_commands-train-wavs_speakers_spkA_train-0"
    assert json.loads(row["meta"])["object"] == "lights"
    assert corpus["train"][1]["label"] == "increase_volume_none"
    assert samples(corpus["test"][0]["audio"]) == (16000, 6400)  # 0.4 s at 8 kHz -> 16 kHz


def test_fluent_speech_commands_with_audio_column(tmp_path):
    features = Features(
        {
            "path": Value("string"),
            "audio": Audio(sampling_rate=16000),
            "speakerId": Value("string"),
            "transcription": Value("string"),
            "action": Value("string"),
            "object": Value("string"),
            "location": Value("string"),
        }
    )

    def split(n: int) -> Dataset:
        return table_dataset(
            {
                "path": [f"wavs/speakers/s/{i}.wav" for i in range(n)],
                "audio": [cell(0.3) for _ in range(n)],
                "speakerId": ["s"] * n,
                "transcription": ["Switch off the lamp"] * n,
                "action": ["deactivate"] * n,
                "object": ["lamp"] * n,
                "location": ["bedroom"] * n,
            },
            features,
        )

    path = save(tmp_path, {"train": split(2), "valid": split(1), "test": split(1)})
    corpus = load(
        "fluent_speech_commands", path, splits={"train": "train", "valid": "valid", "test": "test"}
    )
    check_schema(corpus, "ic")
    assert corpus["train"]["label"] == ["deactivate_lamp_bedroom"] * 2


def test_slurp_intent_from_classlabel_or_scenario_action(tmp_path):
    intents = ["alarm_query", "alarm_set", "play_music"]
    features = Features(
        {
            "slurp_id": Value("int64"),
            "sentence": Value("string"),
            "annotation": Value("string"),
            "intent": ClassLabel(names=intents),
            "audio": Audio(sampling_rate=16000),
        }
    )

    def split(n: int, offset: int) -> Dataset:
        return table_dataset(
            {
                "slurp_id": [offset + i for i in range(n)],
                "sentence": ["wake me up at seven", "play some jazz"][:n],
                "annotation": ["wake me up at [time : seven]", "play some [genre : jazz]"][:n],
                "intent": [1, 2][:n],
                "audio": [cell(0.3, 8000) for _ in range(n)],
            },
            features,
        )

    path = save(tmp_path, {"train": split(2, 0), "devel": split(1, 10), "test": split(2, 20)})
    corpus = load("slurp", path)
    check_schema(corpus, "ic")
    assert corpus["train"]["label"] == ["alarm_set", "play_music"]
    assert corpus["train"]["text"] == ["wake me up at seven", "play some jazz"]
    assert corpus["valid"]["id"] == ["slurp-valid-10"]
    assert samples(corpus["test"][0]["audio"]) == (16000, 4800)

    # a copy with only scenario + action (strings) builds the same intent names
    plain = Features(
        {
            "text": Value("string"),
            "scenario": Value("string"),
            "action": Value("string"),
            "audio": Audio(),
        }
    )
    other = table_dataset(
        {"text": ["set an alarm"], "scenario": ["alarm"], "action": ["set"], "audio": [cell(0.2)]},
        plain,
    )
    corpus = load("slurp", save(tmp_path, {"train": other}, "plain"), splits={"train": "train"})
    assert (corpus["train"][0]["label"], corpus["train"][0]["text"]) == (
        "alarm_set",
        "set an alarm",
    )


def test_voxceleb1_speaker_from_column_or_path(tmp_path):
    features = Features(
        {"audio": Audio(sampling_rate=16000), "id": Value("string"), "speaker_id": Value("string")}
    )

    def split(speakers: list[str]) -> Dataset:
        ids = [f"{s}/1zcIwhmdeo4/{i:05d}" for i, s in enumerate(speakers)]
        return table_dataset(
            {"audio": [cell(0.5) for _ in speakers], "id": ids, "speaker_id": speakers}, features
        )

    path = save(
        tmp_path,
        {
            "train": split(["id10001", "id10002"]),
            "validation": split(["id10001"]),
            "test": split(["id10002"]),
        },
    )
    corpus = load("voxceleb1", path)
    check_schema(corpus, "sid")
    assert corpus["train"]["label"] == ["id10001", "id10002"]
    assert corpus["train"]["speaker"] == ["id10001", "id10002"]

    # SpeechBrain-style split CSVs over the official release: wav paths relative to the
    # wav root, start / stop in samples; the speaker comes from spk_id, or from the path
    root = tmp_path / "vox1" / "wav"
    for rel in ("id10270/5r0dWxy17C8/00001.wav", "id10271/1gtz-CUIygI/00002.wav"):
        write_wav(root / rel, 1.0, 16000)
    (root / "train.csv").write_text(
        "ID,duration,wav,start,stop,spk_id\n"
        "id10270--5r0dWxy17C8--00001,0.5,id10270/5r0dWxy17C8/00001.wav,0,8000,id10270\n"
        "id10271--1gtz-CUIygI--00002,0.25,id10271/1gtz-CUIygI/00002.wav,4000,8000,id10271\n"
    )
    (root / "test.csv").write_text("wav\nid10271/1gtz-CUIygI/00002.wav\n")
    corpus = load("voxceleb1", root, splits={"train": "train.csv", "test": "test.csv"})
    check_schema(corpus, "sid", splits=("train", "test"))
    assert corpus["train"]["label"] == ["id10270", "id10271"]
    assert [samples(a) for a in corpus["train"]["audio"]] == [(16000, 8000), (16000, 4000)]
    assert corpus["train"]["id"][0] == "voxceleb1-train-id10270--5r0dWxy17C8--00001"
    assert corpus["test"]["label"] == ["id10271"]

    unknown = table_dataset({"audio": [cell(0.5, path="clip.wav")]}, Features({"audio": Audio()}))
    with pytest.raises(
        CorpusError, match=r"corpus 'voxceleb1' split 'train' .*row 0.*column 'audio'.*speaker"
    ):
        load("voxceleb1", save(tmp_path, {"train": unknown}, "unknown"), splits={"train": "train"})


def test_iemocap_four_classes_by_session(tmp_path):
    features = Features(
        {
            "audio": Audio(sampling_rate=16000),
            "label": ClassLabel(names=["ang", "hap", "neu", "sad"]),
        }
    )

    def session(labels: list[int]) -> Dataset:
        return table_dataset({"audio": [cell(0.4) for _ in labels], "label": labels}, features)

    path = save(
        tmp_path,
        {
            "session1": session([0, 1]),
            "session2": session([2]),
            "session3": session([3]),
            "session4": session([1]),
            "session5": session([2, 0]),
        },
    )
    corpus = load("iemocap", path)
    check_schema(corpus, "er")
    assert corpus["train"]["label"] == ["angry", "happy", "neutral", "sad"]  # sessions 1-3
    assert corpus["valid"]["label"] == ["happy"]
    assert corpus["test"]["label"] == ["neutral", "angry"]
    assert [json.loads(m)["source_split"] for m in corpus["train"]["meta"]] == [
        "session1+session2+session3"
    ] * 4

    # full-release labels: excited merges into happy, the other emotions are dropped
    raw = table_dataset(
        {
            "file": [
                "Ses01F_impro01_M012.wav",
                "Ses01F_impro01_F003.wav",
                "Ses02M_script01_2_F010.wav",
            ],
            "audio": [cell(0.4, 8000) for _ in range(3)],
            "emotion": ["exc", "fru", "neu"],
        },
        Features({"file": Value("string"), "audio": Audio(), "emotion": Value("string")}),
    )
    corpus = load("iemocap", save(tmp_path, {"all": raw}, "raw"), splits={"test": "all"})
    test = corpus["test"]
    assert test["label"] == ["happy", "neutral"]
    assert test["speaker"] == ["Ses01M", "Ses02F"]
    assert json.loads(test["meta"][0])["source_emotion"] == "exc"
    assert samples(test[0]["audio"]) == (16000, 6400)


def test_voicebank_demand_noisy_input_clean_reference(tmp_path):
    features = Features(
        {
            "id": Value("string"),
            "clean": Audio(sampling_rate=16000),
            "noisy": Audio(sampling_rate=16000),
        }
    )

    def split(speaker: str, n: int) -> Dataset:
        return table_dataset(
            {
                "id": [f"{speaker}_{i + 1:03d}" for i in range(n)],
                "clean": [cell(0.25, freq=300) for _ in range(n)],
                "noisy": [cell(0.30, freq=600) for _ in range(n)],
            },
            features,
        )

    path = save(tmp_path, {"train": split("p226", 20), "test": split("p232", 2)})
    corpus = load("voicebank_demand", path)  # default: last 5% of train is valid
    check_schema(corpus, "se")
    assert (len(corpus["train"]), len(corpus["valid"]), len(corpus["test"])) == (19, 1, 2)
    row = corpus["test"][0]
    assert (row["speaker"], row["ref_speakers"], len(row["refs"])) == ("p232", ["p232"], 1)
    assert samples(row["audio"]) == (16000, 4800)  # the noisy recording is the input
    assert samples(row["refs"][0]) == (16000, 4000)  # the clean one the reference
    assert corpus["valid"]["id"] == ["voicebank_demand-valid-p226_020"]


def test_libri2mix_metadata_csv_with_absolute_paths(tmp_path):
    """LibriMix's own metadata CSVs (absolute wav paths), here for an 8 kHz build."""
    root = tmp_path / "Libri2Mix" / "wav8k" / "min"
    mix_ids = {
        "train-100": ["4077-13754-0001_5142-33396-0065"],
        "dev": ["84-121123-0000_251-136532-0003"],
        "test": ["61-70968-0000_2830-3980-0008", "1089-134686-0000_121-121726-0000"],
    }
    for subset, ids in mix_ids.items():
        lines = ["mixture_ID,mixture_path,source_1_path,source_2_path,length"]
        for mix_id in ids:
            paths = [
                write_wav(root / subset / d / f"{mix_id}.wav", 0.5, 8000, f)
                for d, f in (("mix_clean", 500), ("s1", 300), ("s2", 700))
            ]
            lines.append(",".join([mix_id, *map(str, paths), "4000"]))
        (root / "metadata").mkdir(exist_ok=True)
        (root / "metadata" / f"mixture_{subset}_mix_clean.csv").write_text("\n".join(lines) + "\n")
    corpus = load("libri2mix", root)
    check_schema(corpus, "ss")
    row = corpus["train"][0]
    assert row["id"] == "libri2mix-train-4077-13754-0001_5142-33396-0065"
    assert (row["speaker"], row["ref_speakers"], len(row["refs"])) == ("", ["4077", "5142"], 2)
    assert [samples(a) for a in (row["audio"], *row["refs"])] == [(16000, 8000)] * 3
    # s1 and s2 keep their order: s1 is the 300 Hz source
    s1 = decode_audio_value(row["refs"][0])
    spectrum = np.abs(np.fft.rfft(s1))
    assert abs(np.argmax(spectrum) * 16000 / len(s1) - 300) < 10
    assert len(corpus["test"]) == 2


def test_libri2mix_audio_columns(tmp_path):
    features = Features({"id": Value("string"), "mixture": Audio(), "s1": Audio(), "s2": Audio()})
    data = table_dataset(
        {
            "id": ["19-198-0001_26-495-0002"],
            "mixture": [cell(0.2)],
            "s1": [cell(0.2)],
            "s2": [cell(0.2)],
        },
        features,
    )
    corpus = load("libri2mix", save(tmp_path, {"train": data}), splits={"train": "train"})
    assert corpus["train"][0]["ref_speakers"] == ["19", "26"]


def test_ljspeech_normalized_text_and_contiguous_splits(tmp_path):
    features = Features(
        {
            "id": Value("string"),
            "audio": Audio(sampling_rate=22050),
            "file": Value("string"),
            "text": Value("string"),
            "normalized_text": Value("string"),
        }
    )
    ids = [f"LJ001-{i + 1:04d}" for i in range(20)]
    data = table_dataset(
        {
            "id": ids,
            "audio": [cell(0.1, 22050, f"{i}.wav") for i in ids],
            "file": [f"wavs/{i}.wav" for i in ids],
            "text": ["In 1465 Sweynheim and Pannartz began printing"] * 20,
            "normalized_text": ["In fourteen sixty-five Sweynheim and Pannartz began printing"]
            * 20,
        },
        features,
    )
    corpus = load("ljspeech", save(tmp_path, {"train": data}))
    check_schema(corpus, "tts")
    assert (len(corpus["train"]), len(corpus["valid"]), len(corpus["test"])) == (18, 1, 1)
    row = corpus["test"][0]
    assert (row["id"], row["speaker"]) == ("ljspeech-test-LJ001-0020", "LJ")
    assert row["text"] == "In fourteen sixty-five Sweynheim and Pannartz began printing"
    assert json.loads(row["meta"])["raw_text"].startswith("In 1465")
    assert samples(row["audio"]) == (16000, 1600)  # 2205 samples at 22.05 kHz -> 1600 at 16 kHz


def test_every_adapter_is_tested_and_has_a_config():
    assert set(ADAPTERS) == {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert {a.task for a in ADAPTERS.values()} <= set(TASKS)
