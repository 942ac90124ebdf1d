"""Corpus loading: local copies in each layout `load_corpus` reads (save_to_disk, parquet,
metadata files), split specs, row selection and chunking, the shipped configs, the CLI, and
errors that name corpus, path, split, row and column. Per-corpus mappings are tested in
tests/data/test_adapters.py, whose helpers build the tiny local copies used here.
"""

from __future__ import annotations

import dataclasses
import json

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
from datasets import Audio, Dataset, Features, Value
from test_adapters import (
    CONFIG_DIR,
    cell,
    check_schema,
    load,
    samples,
    save,
    speech_commands_split,
    table_dataset,
)

from mmllm.cli.corpus import convert as main
from mmllm.config import ConfigError, load_config
from mmllm.corpora import convert as corpora
from mmllm.corpora.adapters import CorpusError, get_adapter
from mmllm.corpora.convert import CorpusConfig, load_corpus, parse_split_spec

# ----------------------------------------------------------------------------- helpers


def librispeech_rows(audio: list[dict], text: list[str | None]) -> Dataset:
    features = Features(
        {
            "audio": Audio(),
            "text": Value("string"),
            "speaker_id": Value("int64"),
            "id": Value("string"),
        }
    )
    n = len(audio)
    return table_dataset(
        {
            "audio": audio,
            "text": text,
            "speaker_id": [1] * n,
            "id": [f"1-2-{i:04d}" for i in range(n)],
        },
        features,
    )


# ----------------------------------------------------------------------------- loading


def test_parquet_directory_goes_through_load_dataset(tmp_path, monkeypatch):
    """A local copy in the hub's parquet layout loads like the hub id would."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    features = Features(
        {
            "audio": Audio(sampling_rate=16000),
            "text": Value("string"),
            "speaker_id": Value("int64"),
            "id": Value("string"),
        }
    )
    root = tmp_path / "librispeech_parquet"
    for split, text in (("train", "ONE"), ("validation", "TWO")):
        data = table_dataset(
            {"audio": [cell(0.2, 8000)], "text": [text], "speaker_id": [7], "id": [f"7-1-{split}"]},
            features,
        )
        (root / "data").mkdir(parents=True, exist_ok=True)
        data.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    corpus = load("librispeech", root, splits={"train": "train", "valid": "validation"})
    check_schema(corpus, "asr", splits=("train", "valid"))
    assert (corpus["train"]["text"], corpus["valid"]["text"]) == (["one"], ["two"])
    assert samples(corpus["valid"][0]["audio"]) == (16000, 3200)


def test_max_rows_per_split_takes_evenly_spaced_rows(tmp_path):
    words = ["yes"] * 4 + ["no"] * 4 + ["up"] * 4
    path = save(tmp_path, {"train": speech_commands_split(words, [0.2] * 12)})
    corpus = load("speech_commands", path, splits={"train": "train"}, max_rows_per_split=3)
    assert list(corpus) == ["train"]
    assert corpus["train"]["label"] == ["yes", "no", "up"]  # label-sorted source, every class kept
    assert [json.loads(m)["source_index"] for m in corpus["train"]["meta"]] == [0, 4, 8]


def test_parallel_conversion_streams_keeps_flac_and_equals_one_process(tmp_path, monkeypatch):
    """Workers convert blocks of rows; this process names them in source order, so the
    corpus (ids, a repeated id resolved, audio bytes, fingerprint) does not depend on
    num_proc. Audio is stored as FLAC that decodes to the 16-bit samples a WAV would hold."""
    from mmllm.audio.io import decode_audio_value

    monkeypatch.setattr(corpora, "BLOCK_ROWS", 2)
    texts = [f"LINE {i}" for i in range(7)]
    rows = librispeech_rows([cell(0.1 + 0.01 * i, 8000) for i in range(7)], texts)
    rows = rows.map(lambda row, i: {"id": "1-2-0003" if i == 5 else row["id"]}, with_indices=True)
    path = save(tmp_path, {"train": rows})
    cfg = CorpusConfig(name="librispeech", path=str(path), splits={"train": "train"})
    one = load_corpus(cfg, progress=False)["train"]
    work = tmp_path / "work"
    work.mkdir()
    four = load_corpus(cfg, progress=False, num_proc=4, work_dir=work)["train"]
    assert list(work.glob("*.arrow"))  # memory-mapped from the scratch folder, not held
    assert one["text"] == four["text"] == [t.lower() for t in texts]
    assert one["id"] == four["id"] and one["id"][5] == "librispeech-train-1-2-0003-5"
    assert one._fingerprint == four._fingerprint
    assert [a["bytes"] for a in one["audio"]] == [a["bytes"] for a in four["audio"]]
    flac = one[2]["audio"]["bytes"]
    assert flac[:4] == b"fLaC"
    wav = load_corpus(dataclasses.replace(cfg, audio_format="wav"), progress=False)["train"][2][
        "audio"
    ]["bytes"]
    assert wav[:4] == b"RIFF" and len(flac) < len(wav)
    np.testing.assert_array_equal(
        decode_audio_value({"bytes": flac}), decode_audio_value({"bytes": wav})
    )


@pytest.mark.parametrize("config_file", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load(config_file):
    cfg = load_config(CorpusConfig, config_file)
    assert cfg.name == config_file.stem
    splits = cfg.splits or get_adapter(cfg.name).default_splits  # unset: the adapter's
    assert set(splits) == {"train", "valid", "test"}
    assert cfg.trust_remote_code is False
    for spec in splits.values():
        assert parse_split_spec(spec)


def test_parse_split_spec():
    assert parse_split_spec("train.clean.100") == [("train.clean.100", None, None)]
    assert parse_split_spec("train[:95%]") == [("train", None, "95%")]
    assert parse_split_spec("session1 + session2[2:-1]") == [
        ("session1", None, None),
        ("session2", "2", "-1"),
    ]
    assert parse_split_spec("data/train_data.csv") == [("data/train_data.csv", None, None)]
    with pytest.raises(CorpusError, match="bad split spec"):
        parse_split_spec("train[:5")


def test_cli_writes_dataset_dict(tmp_path, capsys):
    path = save(tmp_path, {"train": librispeech_rows([cell(0.1)], ["HI THERE"])})
    out = tmp_path / "out"
    assert main(["name=librispeech", f"path={path}", "splits.train=train", "--out", str(out)]) == 0
    saved = datasets.load_from_disk(str(out))
    assert list(saved) == ["train"] and saved["train"][0]["text"] == "hi there"
    assert load_config(CorpusConfig, out / "config.yaml").path == str(path)
    assert main(["name=librispeech", "path=x", "splits.dev=a", "--out", str(out)]) == 2
    assert "unknown split" in capsys.readouterr().err
    # a killed run's scratch folder (its rows streamed there) goes with the next run
    stale = tmp_path / ".out.convert-999999"
    (stale / "x").mkdir(parents=True)
    args = ["name=librispeech", f"path={path}", "splits.train=train", "--out", str(out)]
    assert main([*args, "--num-proc", "2"]) == 0
    assert not stale.exists() and not list(tmp_path.glob(".out.convert-*"))


# ----------------------------------------------------------------------------- errors


def test_unreachable_hub_names_corpus_and_suggests_offline_options(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CorpusError) as err:
        load("librispeech", "mmllm-test/no-such-corpus", subset="clean")
    message = str(err.value)
    assert "corpus 'librispeech'" in message
    assert "'mmllm-test/no-such-corpus' could not be reached" in message
    assert "local" in message and "mmllm synth" in message


def test_hub_route_passes_subset_split_and_revision(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        return librispeech_rows([cell(0.1)], [split.upper()])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = CorpusConfig(
        name="librispeech",
        path="openslr/librispeech_asr",
        subset="clean",
        splits={"train": "train.100", "test": "test"},
        revision="refs/convert/parquet",
    )
    corpus = load_corpus(cfg, progress=False)
    assert calls == [
        ("openslr/librispeech_asr", "clean", "train.100", {"revision": "refs/convert/parquet"}),
        ("openslr/librispeech_asr", "clean", "test", {"revision": "refs/convert/parquet"}),
    ]  # trust_remote_code is only passed when the user sets it
    assert corpus["train"]["text"] == ["train.100"] and corpus["test"]["text"] == ["test"]


def test_loading_script_error_suggests_the_parquet_export(monkeypatch):
    def fake_load_dataset(path, name=None, split=None, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found lj_speech.py")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(
        CorpusError,
        match=r"corpus 'ljspeech' from hub id 'keithito/lj_speech'.*refs/convert/parquet",
    ):
        load("ljspeech", "keithito/lj_speech")


def test_missing_local_directory_for_file_splits(tmp_path):
    with pytest.raises(
        CorpusError,
        match=r"corpus 'libri2mix': split 'metadata/.*csv' is a file under `path`.*does not exist",
    ):
        load("libri2mix", tmp_path / "Libri2Mix" / "wav16k" / "min")


def test_wrong_dataset_lists_missing_and_present_columns(tmp_path):
    features = Features({"id": Value("string"), "clean": Audio(), "noisy": Audio()})
    data = table_dataset({"id": ["p226_001"], "clean": [cell(0.1)], "noisy": [cell(0.1)]}, features)
    path = save(tmp_path, {"train": data})
    with pytest.raises(CorpusError) as err:
        load("librispeech", path, splits={"train": "train"})
    message = str(err.value)
    assert "missing column(s) 'audio', 'text', 'speaker_id'" in message
    assert "['clean', 'id', 'noisy']" in message and "corpus 'librispeech'" in message


def test_bad_audio_names_corpus_split_row_and_column(tmp_path):
    data = librispeech_rows([cell(0.1), {"bytes": b"not a wav file", "path": "x.flac"}], ["A", "B"])
    path = save(tmp_path, {"validation": data})
    with pytest.raises(CorpusError) as err:
        load("librispeech", path, splits={"valid": "validation"})
    message = str(err.value)
    assert (
        "corpus 'librispeech' split 'valid' (source 'validation') row 1 (id '1-2-0001') column 'audio'"
        in message
    )
    assert "cannot decode audio" in message


def test_missing_field_names_the_row(tmp_path):
    path = save(tmp_path, {"train": librispeech_rows([cell(0.1), cell(0.1)], ["A", None])})
    with pytest.raises(
        CorpusError,
        match=r"split 'train' \(source 'train'\) row 1 \(id '1-2-0001'\) column 'text': missing",
    ):
        load("librispeech", path, splits={"train": "train"})


def test_missing_source_split_lists_available(tmp_path):
    path = save(tmp_path, {"train": librispeech_rows([cell(0.1)], ["A"])})
    with pytest.raises(CorpusError, match=r"no split 'validation' \(it has \['train'\]\)"):
        load("librispeech", path, splits={"valid": "validation"})


def test_unknown_adapter_and_split_names_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: librispeach\npath: openslr/librispeech_asr\n")
    with pytest.raises(
        ConfigError, match=r"key 'name'.*unknown corpus adapter 'librispeach'.*'librispeech'"
    ):
        load_config(CorpusConfig, bad)
    with pytest.raises(ConfigError, match=r"key 'splits'.*unknown split\(s\) \['dev'\]"):
        load_config(CorpusConfig, None, ["name=librispeech", "path=x", "splits.dev=validation"])
    with pytest.raises(ValueError, match="unknown corpus adapter"):
        CorpusConfig(name="nope", path="x")
