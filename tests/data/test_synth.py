"""SynthDASB: counts, label sets, held-out speakers and sentences, signal relations, determinism."""

import filecmp
import json
import time
from pathlib import Path

import numpy as np
import pytest

from mmllm.audio.io import decode_audio_value
from mmllm.config import ConfigError, config_hash, config_to_dict, from_dict
from mmllm.corpus.labels import KS_LABELS, KS_UNKNOWN
from mmllm.corpus.reader import corpus_tasks, load_task
from mmllm.corpus.schema import COLUMNS, SPLITS, TASKS
from mmllm.synth.build import (
    SynthConfig,
    build,
    ks_label,
    plan_task,
    render,
    row_renderer,
    sentence_side,
)
from mmllm.synth.espeak import Voice, get_espeak
from mmllm.synth.grammar import GRID_SLOTS, GRID_VOCABULARY
from mmllm.synth.labels import ER_EMOTIONS, INTENTS, KS_UNKNOWN_WORDS
from mmllm.synth.noise import mix_at_snr, pink_noise, rms
from mmllm.synth.voices import speaker_pool


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    started = time.perf_counter()
    build(SynthConfig.from_name("tiny"), out, workers=2, preview=1)
    assert time.perf_counter() - started < 30, "tiny must build in under 30 s"
    return out


def rows(root, task, split):
    return list(load_task(root, task)[split])


def test_every_task_has_schema_counts_and_splits(tiny):
    cfg = SynthConfig.from_name("tiny")
    manifest = json.loads((tiny / "manifest.json").read_text())
    assert sorted(manifest["tasks"]) == sorted(TASKS)
    for task in TASKS:
        data = load_task(tiny, task)
        assert list(data) == list(SPLITS)
        for split in SPLITS:
            assert data[split].num_rows == getattr(cfg.counts[task], split)
            assert tuple(data[split].column_names) == COLUMNS
            assert set(data[split]["task"]) == {task}


def test_label_sets(tiny):
    train_labels = {task: set(load_task(tiny, task)["train"]["label"]) for task in TASKS}
    assert train_labels["ks"] == set(KS_LABELS) and len(KS_LABELS) == 12
    assert train_labels["ic"] == {intent.label for intent in INTENTS}
    assert len(train_labels["ic"]) >= 24
    assert train_labels["er"] == set(ER_EMOTIONS)
    assert len(train_labels["sid"]) == 40
    assert set(load_task(tiny, "sid")["test"]["label"]) <= train_labels["sid"]
    assert train_labels["sv"] == {"same", "different"}


def test_test_speakers_and_sentences_never_in_training(tiny):
    speakers = json.loads((tiny / "speakers.json").read_text())
    assert len(speakers) >= 100
    assert len({(s["language"], s["variant"], s["pitch"], s["rate"]) for s in speakers}) == len(
        speakers
    )
    train_speakers, train_texts = set(), set()
    for task in TASKS:
        for row in load_task(tiny, task)["train"]:
            train_speakers.update([row["speaker"], *row["ref_speakers"]])
            train_texts.add(row["text"])
    asr_test = load_task(tiny, "asr")["test"]
    assert not set(asr_test["speaker"]) & train_speakers
    assert not set(asr_test["text"]) & train_texts
    assert all(sentence_side(t) == "test" for t in asr_test["text"])
    sv_test = load_task(tiny, "sv")["test"]
    sid_speakers = set(load_task(tiny, "sid")["train"]["label"])
    assert (
        not (set(sv_test["speaker"]) | {s for r in sv_test["ref_speakers"] for s in r})
        & sid_speakers
    )


def test_audio_words_and_ks_clips(tiny):
    for row in rows(tiny, "asr", "test"):
        wav = decode_audio_value(row["audio"], name=row["id"])
        assert wav.dtype == np.float32 and rms(wav) > 0.01
        assert [w["word"] for w in row["words"]] == row["text"].split()
        starts = [w["start"] for w in row["words"]]
        assert starts == sorted(starts) and all(
            w["start"] <= w["end"] <= len(wav) / 16000 + 1e-3 for w in row["words"]
        )
    for row in rows(tiny, "ks", "train"):
        wav = decode_audio_value(row["audio"], name=row["id"])
        assert wav.shape == (16000,)
        assert (row["text"] == "") == (row["label"] == "_silence_")
        if row["label"] not in ("_silence_", "_unknown_"):
            assert row["text"] == row["label"]


def test_se_snr_and_ss_sum(tiny):
    for row in rows(tiny, "se", "test"):
        noisy = decode_audio_value(row["audio"])
        clean = decode_audio_value(row["refs"][0])
        snr = 10 * np.log10(
            np.sum(clean.astype(np.float64) ** 2) / np.sum((noisy - clean).astype(np.float64) ** 2)
        )
        meta = json.loads(row["meta"])
        assert -5 <= meta["snr_db"] <= 15 and snr == pytest.approx(meta["snr_db"], abs=0.3)
    assert {json.loads(r["meta"])["noise"] for r in rows(tiny, "se", "train")} == {
        "white",
        "pink",
        "babble",
    }
    for row in rows(tiny, "ss", "test"):
        mixture = decode_audio_value(row["audio"])
        first, second = (decode_audio_value(r) for r in row["refs"])
        assert len(row["ref_speakers"]) == 2 and row["ref_speakers"][0] != row["ref_speakers"][1]
        np.testing.assert_allclose(mixture, first + second, atol=3 / 32768)


def test_emotions_change_prosody(tiny):
    meta = [json.loads(r["meta"]) | {"label": r["label"]} for r in rows(tiny, "er", "train")]
    volume = {m["label"]: m["prosody"]["volume"] for m in meta}
    assert volume["angry"] > volume["neutral"] > volume["sad"]


def test_same_seed_same_bytes(tiny, tmp_path):
    again = tmp_path / "again"
    build(SynthConfig.from_name("tiny"), again, workers=1)
    for task in TASKS:
        for split in SPLITS:
            compare = filecmp.dircmp(tiny / task / split, again / task / split)
            assert compare.left_list == compare.right_list
            match, mismatch, errors = filecmp.cmpfiles(
                tiny / task / split, again / task / split, compare.common_files, shallow=False
            )
            assert not mismatch and not errors, (task, split, mismatch)
    assert filecmp.cmp(tiny / "manifest.json", again / "manifest.json", shallow=False)


def test_rebuild_reuses_and_other_config_is_refused(tiny, capsys):
    build(SynthConfig.from_name("tiny"), tiny)
    assert "reusing it" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=rf"{tiny}: holds a SynthDASB build with config hash"):
        build(SynthConfig.from_name("tiny", seed=5), tiny)


def test_preview_wavs(tiny):
    index = (tiny / "preview" / "index.tsv").read_text().splitlines()
    files = [line.split("\t")[0] for line in index[1:]]
    # one row per task, plus refs: SE 1, SS 2, SV 1
    assert len(files) == len(TASKS) + 4
    assert all((tiny / "preview" / name).stat().st_size > 1000 for name in files)


def test_speaker_pool_roles():
    pool = speaker_pool(0, 120, 40, 10, 20)
    roles = [s.role for s in pool]
    assert roles.count("sid") == 40 and roles.count("test") == 20 and roles.count("valid") == 10
    assert len({s.voice for s in pool}) == 120
    with pytest.raises(ValueError, match="exceed num_speakers"):
        speaker_pool(0, 50, 40, 10, 20)


def test_espeak_words_and_voices():
    espeak = get_espeak()
    first = espeak.synthesize("put it in the kitchen door", Voice("en-us", "f4", pitch=60))
    other = espeak.synthesize("put it in the kitchen door", Voice("en-gb-scotland", "m3", pitch=30))
    assert [w["word"] for w in first.words] == ["put", "it", "in", "the", "kitchen", "door"]
    assert all(
        a["end"] <= b["start"] + 1e-3 for a, b in zip(first.words, first.words[1:], strict=False)
    )
    assert first.wav.size != other.wav.size or not np.array_equal(first.wav, other.wav)
    with pytest.raises(ValueError, match="no voice 'xx-nope\\+m1'"):
        espeak.synthesize("hello", Voice("xx-nope", "m1"))


def test_rows_are_pure_functions_of_their_spec():
    # eSpeak keeps state between utterances; reloading it per utterance must make that moot.
    cfg = SynthConfig.from_name("tiny")
    speakers = cfg.speakers()
    specs = plan_task(cfg, "se", "valid", speakers)[:6]
    get_espeak().synthesize("this process has used espeak before", Voice())
    alone = [render(spec) for spec in reversed(specs)][::-1]
    with row_renderer(workers=2) as render_all:
        pooled = list(render_all(specs))
    assert [r["audio"]["bytes"] for r in alone] == [r["audio"]["bytes"] for r in pooled]
    assert [r["refs"] for r in alone] == [r["refs"] for r in pooled]
    assert [r["id"] for r in pooled] == [s["id"] for s in specs]


def test_noise_levels():
    rng = np.random.default_rng(0)
    clean = np.sin(np.arange(16000) / 10).astype(np.float32)
    noise = pink_noise(rng, 16000)
    mixed = mix_at_snr(clean, noise, 5.0)
    assert 10 * np.log10(rms(clean) ** 2 / rms(mixed - clean) ** 2) == pytest.approx(5.0, abs=1e-3)
    power = np.abs(np.fft.rfft(pink_noise(rng, 1 << 16))) ** 2
    low, high = power[100:200].mean(), power[1000:2000].mean()  # one decade apart
    assert 10 * np.log10(low / high) == pytest.approx(10.0, abs=1.5)  # 1/f: -10 dB per decade


@pytest.mark.slow
def test_small_build_time_counts_and_row_determinism(tmp_path):
    cfg = SynthConfig.from_name("small")
    started = time.perf_counter()
    out = build(cfg, tmp_path / "small", workers=2)
    seconds = time.perf_counter() - started
    assert seconds < 300, f"small took {seconds:.0f} s"
    asr_words = {w for t in load_task(out, "asr")["train"]["text"] for w in t.split()}
    assert len(asr_words) >= 1000
    speakers = cfg.speakers()
    for task in TASKS:
        data = load_task(out, task)
        assert [data[s].num_rows for s in SPLITS] == [getattr(cfg.counts[task], s) for s in SPLITS]
        # every row is a pure function of the config: re-render a few and compare bytes
        specs = plan_task(cfg, task, "test", speakers)
        for index in (0, len(specs) // 2, len(specs) - 1):
            stored = data["test"][index]
            fresh = render(specs[index])
            assert (
                fresh["audio"]["bytes"] == stored["audio"]["bytes"]
                and fresh["label"] == stored["label"]
            )


def test_corpus_tasks_are_those_on_disk_in_task_order(tmp_path):
    for task in ("ks", "asr", "not-a-task"):
        (tmp_path / task).mkdir()
    assert corpus_tasks(tmp_path) == ("asr", "ks")
    assert corpus_tasks(tmp_path, ["ks", "ic"]) == ("ks",)
    with pytest.raises(FileNotFoundError, match=r"none of the SynthDASB tasks \['ic', 'er'\]"):
        corpus_tasks(tmp_path, ["ic", "er"])


def test_grid_grammar_sentences_and_hash_of_existing_configs():
    default = SynthConfig.from_name("tiny")
    grid = SynthConfig.from_name("tiny", sentence_grammar="grid")
    # the field is left out while unset, so corpora built before it keep their hash (the
    # small preset's is the one recorded in the manifest of data/synthdasb-small built before)
    assert "sentence_grammar" not in config_to_dict(default)
    assert config_hash(SynthConfig.from_name("small")) == "00c5b077fce4d7e4"
    assert config_hash(grid) != config_hash(default)
    assert len(GRID_VOCABULARY) == 51
    speakers = grid.speakers()
    for task in ("asr", "sv", "tts"):
        for split in SPLITS:
            for spec in plan_task(grid, task, split, speakers):
                for text, _, _ in spec["utts"]:
                    words = text.split()
                    assert len(words) == 6, text
                    assert all(w in slot for w, slot in zip(words, GRID_SLOTS, strict=True)), text
                    assert sentence_side(text) == split  # held-out sentences as before
    # the default grammar is untouched: its sentences are not GRID's
    asr = [s["utts"][0][0] for s in plan_task(default, "asr", "train", default.speakers())]
    assert not any(len(t.split()) == 6 and t.split()[0] in GRID_SLOTS[0] for t in asr)


def test_unknown_sentence_grammar_is_refused_by_key():
    with pytest.raises(ConfigError, match="sentence_grammar.*'timit'"):
        from_dict(SynthConfig, {"sentence_grammar": "timit"})


def test_ks_train_unknown_share_labels_and_hash():
    from collections import Counter

    balanced = Counter(ks_label(i, "train", None) for i in range(1200))
    assert set(balanced.values()) == {100}  # 12 labels, 100 each
    heavy = Counter(ks_label(i, "train", 0.45) for i in range(1200))
    assert heavy[KS_UNKNOWN] == 540  # floor(1200 * 0.45)
    others = {n for label, n in heavy.items() if label != KS_UNKNOWN}
    assert others == {60}  # the other 660 rows over 11 labels, in turn
    # spread evenly: every window of 20 rows has 9 unknown clips
    labels = [ks_label(i, "train", 0.45) for i in range(1200)]
    assert {labels[i : i + 20].count(KS_UNKNOWN) for i in range(0, 1200, 20)} == {9}
    # validation and test stay balanced, so scores compare with balanced corpora
    for split in ("valid", "test"):
        assert [ks_label(i, split, 0.45) for i in range(24)] == list(KS_LABELS) * 2
    default = SynthConfig.from_name("tiny")
    heavy_cfg = SynthConfig.from_name("tiny", ks_train_unknown_share=0.45)
    assert "ks_train_unknown_share" not in config_to_dict(default)
    assert config_hash(heavy_cfg) != config_hash(default)
    specs = plan_task(heavy_cfg, "ks", "train", heavy_cfg.speakers())
    unknown = [s for s in specs if s["label"] == KS_UNKNOWN]
    assert len(unknown) == int(len(specs) * 0.45)
    assert all(s["utts"][0][0] in KS_UNKNOWN_WORDS for s in unknown)
    with pytest.raises(ConfigError, match="ks_train_unknown_share"):
        from_dict(SynthConfig, {"ks_train_unknown_share": 1.5})
