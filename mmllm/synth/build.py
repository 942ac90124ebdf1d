"""SynthDASB: an offline speech corpus for every DASB task, synthesized with eSpeak NG.

    mmllm synth --size tiny|small|full --out DIR [--preview 3] [KEY=VALUE ...]

Writes one `datasets.DatasetDict` (train/valid/test) per task under DIR/<task>, all in
the schema of `mmllm.corpus.schema`, plus `speakers.json`, `manifest.json` (counts, hours,
label sets, config hash) and the resolved `config.yaml`. The same config gives the same
bytes: every row is a pure function of (seed, task, split, index). A DIR already built
with the same config is reused; one built with another config is refused.

Building happens in two phases so that determinism does not depend on parallelism:
`plan_task` draws every row's texts, speakers and noise settings in the main process
(cheap, text only), then worker processes render the specs with eSpeak in order.

Held-out text: a sentence belongs to the test side, the valid side or the train side by
a hash of its words, so test sentences never appear in any training split. Speakers are
held out by role (see `mmllm.synth.voices`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import soundfile as sf
from datasets import DatasetDict
from tqdm import tqdm

from mmllm.audio.io import decode_audio_value
from mmllm.config import (
    OMIT_WHEN_NONE,
    ConfigError,
    config_dataclass,
    config_hash,
    save_config,
)
from mmllm.corpus.labels import KS_LABELS, KS_SILENCE, KS_UNKNOWN
from mmllm.corpus.reader import load_task
from mmllm.corpus.schema import SPLITS, TASKS, make_row, rows_to_dataset
from mmllm.fileio import atomic_directory, atomic_write_text, exclusive_lock
from mmllm.synth import noise as noise_lib
from mmllm.synth.espeak import OUTPUT_SAMPLE_RATE, Voice, get_espeak
from mmllm.synth.grammar import asr_sentence, grid_sentence
from mmllm.synth.labels import ER_EMOTIONS, ER_SENTENCES, INTENTS, KS_UNKNOWN_WORDS, ic_utterance
from mmllm.synth.voices import SPLIT_ROLES, Speaker, speaker_pool, with_emotion

KS_CLIP_SECONDS = 1.0


NOISE_TYPES = ("white", "pink", "babble")


@config_dataclass
class SplitCounts:
    train: int
    valid: int
    test: int


# Rows per task and split for each named size. tiny: the tests; small: the embedded default.
SIZES: dict[str, dict[str, tuple[int, int, int]]] = {
    "tiny": {
        "asr": (48, 16, 16),
        "ks": (48, 24, 24),
        "ic": (80, 16, 16),
        "sid": (80, 40, 40),
        "sv": (32, 16, 16),
        "er": (32, 16, 16),
        "se": (32, 16, 16),
        "ss": (24, 12, 12),
        "tts": (40, 16, 16),
    },
    "small": {
        "asr": (6000, 200, 500),
        "ks": (2400, 240, 480),
        "ic": (2400, 240, 480),
        "sid": (1600, 400, 400),
        "sv": (1200, 200, 400),
        "er": (1600, 200, 400),
        "se": (1200, 200, 400),
        "ss": (1000, 200, 400),
        "tts": (1600, 200, 400),
    },
    "full": {
        "asr": (40000, 1000, 2000),
        "ks": (12000, 1200, 2400),
        "ic": (12000, 1200, 2400),
        "sid": (8000, 1000, 1000),
        "sv": (6000, 1000, 2000),
        "er": (8000, 1000, 2000),
        "se": (8000, 1000, 2000),
        "ss": (6000, 1000, 2000),
        "tts": (8000, 1000, 2000),
    },
}


@config_dataclass
class SynthConfig:
    """What to synthesize. `counts` entries override the preset of `size` per task."""

    size: str = "small"
    seed: int = 0
    tasks: list[str] = dataclasses.field(default_factory=lambda: list(TASKS))
    counts: dict[str, SplitCounts] = dataclasses.field(default_factory=dict)
    num_speakers: int = 120
    num_sid_speakers: int = 40
    num_valid_speakers: int = 10
    num_test_speakers: int = 20
    snr_db_min: float = -5.0
    snr_db_max: float = 15.0
    babble_speakers: int = 4
    # Where every sentence (ASR, SID, SV, SE, SS, TTS) comes from: None for SynthDASB's
    # ~1000-word grammar; "grid" for GRID's 51 words (a minutes-long check that a model
    # listens). Left out of the hash while None, so corpora built before it are reused.
    sentence_grammar: str | None = dataclasses.field(default=None, metadata=OMIT_WHEN_NONE)
    # Share of KS *training* clips labelled `_unknown_` (None: balanced, 1/12 like every
    # label). Speech Commands' training split is mostly unknown words; balanced, each of the
    # 25 stand-in words gets 1/25 of one label's clips, and unknown words are the class every
    # input misses most. Validation and test stay balanced so scores compare. Left out of
    # the hash while None, so corpora built before it are reused.
    ks_train_unknown_share: float | None = dataclasses.field(default=None, metadata=OMIT_WHEN_NONE)

    def __post_init__(self) -> None:
        unknown = [t for t in [*self.tasks, *self.counts] if t not in TASKS]
        if unknown:
            raise ValueError(
                f"key 'tasks'/'counts': unknown task(s) {unknown}; expected some of {list(TASKS)}"
            )
        if self.size not in SIZES and any(t not in self.counts for t in self.tasks):
            raise ValueError(
                f"key 'size': {self.size!r} is not one of {list(SIZES)}; give counts for every task"
            )
        preset = SIZES.get(self.size, {})
        for task in self.tasks:
            if task not in self.counts:
                self.counts[task] = SplitCounts(*preset[task])
        self.counts = {task: self.counts[task] for task in TASKS if task in self.counts}
        if self.sentence_grammar not in SENTENCE_GRAMMARS:
            named = [name for name in SENTENCE_GRAMMARS if name is not None]
            raise ValueError(
                f"key 'sentence_grammar': {self.sentence_grammar!r} is not one of {named} "
                "(leave it unset for SynthDASB's own grammar)"
            )
        share = self.ks_train_unknown_share
        if share is not None and not 0.0 < share < 1.0:
            raise ValueError(f"key 'ks_train_unknown_share': must be in (0, 1), got {share}")
        if self.snr_db_min > self.snr_db_max:
            raise ValueError(f"key 'snr_db_min': {self.snr_db_min} > snr_db_max {self.snr_db_max}")

    @classmethod
    def from_name(cls, size: str, **overrides) -> SynthConfig:
        return cls(size=size, **overrides)

    def speakers(self) -> list[Speaker]:
        """The speaker pool this config draws (deterministic in `seed`)."""
        return speaker_pool(
            self.seed,
            self.num_speakers,
            self.num_sid_speakers,
            self.num_valid_speakers,
            self.num_test_speakers,
        )


SENTENCE_GRAMMARS: dict[str | None, Callable[[random.Random], str]] = {
    None: asr_sentence,
    "grid": grid_sentence,
}


SENTENCE_SIDES = {"test": 0, "valid": 1}  # hash buckets out of 20; the other 18 are train


def sentence_side(sentence: str) -> str:
    bucket = int(hashlib.sha1(sentence.encode()).hexdigest(), 16) % 20
    return next((side for side, b in SENTENCE_SIDES.items() if b == bucket), "train")


def draw_sentence(cfg: SynthConfig, rng: random.Random, split: str) -> str:
    """A sentence of `cfg.sentence_grammar` on `split`'s side of the held-out partition."""
    while True:
        sentence = SENTENCE_GRAMMARS[cfg.sentence_grammar](rng)
        if sentence_side(sentence) == split:
            return sentence


def row_seed(seed: int, row_id: str) -> int:
    return int(hashlib.sha256(f"{seed}-{row_id}".encode()).hexdigest()[:16], 16)


def plan_task(cfg: SynthConfig, task: str, split: str, speakers: list[Speaker]) -> list[dict]:
    """Every row's content for one task/split, as plain picklable specs (no audio yet)."""
    count = getattr(cfg.counts[task], split)
    pool = [s for s in speakers if s.role in SPLIT_ROLES[split]]
    sid_set = [s for s in speakers if s.role == "sid"]
    specs = []
    for index in range(count):
        row_id = f"{task}-{split}-{index:06d}"
        rng = random.Random(f"{cfg.seed}-{row_id}")
        spec = {
            "id": row_id,
            "task": task,
            "seed": row_seed(cfg.seed, row_id),
            "label": "",
            "meta": {},
        }
        spec.update(PLANNERS[task](cfg, rng, index, split, pool, sid_set))
        specs.append(spec)
    return specs


def _utt(text: str, speaker: Speaker, voice: Voice | None = None) -> tuple[str, Voice, str]:
    return (text, voice or speaker.voice, speaker.speaker_id)


def _plan_asr(cfg, rng, index, split, pool, sid_set):
    return {"utts": [_utt(draw_sentence(cfg, rng, split), rng.choice(pool))]}


def ks_label(index: int, split: str, unknown_share: float | None) -> str:
    """The label of KS row `index`: balanced over the 12 labels, or, for training rows with
    `unknown_share`, `_unknown_` on an evenly spread `unknown_share` of the rows and the
    other 11 labels in turn on the rest."""
    if split != "train" or unknown_share is None:
        return KS_LABELS[index % len(KS_LABELS)]
    unknowns_before = math.floor(index * unknown_share)
    if math.floor((index + 1) * unknown_share) > unknowns_before:
        return KS_UNKNOWN
    others = [label for label in KS_LABELS if label != KS_UNKNOWN]
    return others[(index - unknowns_before) % len(others)]


def _plan_ks(cfg, rng, index, split, pool, sid_set):
    label = ks_label(index, split, cfg.ks_train_unknown_share)
    spec = {
        "label": label,
        "meta": {
            "noise_snr_db": round(rng.uniform(20, 40), 2),
            "noise": rng.choice(("white", "pink")),
        },
    }
    if label == KS_SILENCE:
        spec["utts"] = []
        spec["meta"]["silence_rms"] = round(rng.uniform(0.001, 0.02), 5)
    else:
        word = rng.choice(KS_UNKNOWN_WORDS) if label == KS_UNKNOWN else label
        spec["utts"] = [_utt(word, rng.choice(pool))]
    return spec


def _plan_ic(cfg, rng, index, split, pool, sid_set):
    intent = INTENTS[index % len(INTENTS)]
    return {
        "label": intent.label,
        "utts": [_utt(ic_utterance(intent, rng), rng.choice(pool))],
    }


def _plan_sid(cfg, rng, index, split, pool, sid_set):
    speaker = sid_set[index % len(sid_set)]  # closed set: every split has the same speakers
    return {"label": speaker.speaker_id, "utts": [_utt(draw_sentence(cfg, rng, split), speaker)]}


def _plan_sv(cfg, rng, index, split, pool, sid_set):
    # Trials never use SID speakers: train trials come from the other training speakers.
    candidates = [s for s in pool if s.role != "sid"]
    enroll = rng.choice(candidates)
    same = index % 2 == 0
    test = enroll if same else rng.choice([s for s in candidates if s is not enroll])
    return {
        "label": "same" if same else "different",
        "utts": [
            _utt(draw_sentence(cfg, rng, split), enroll),
            _utt(draw_sentence(cfg, rng, split), test),
        ],
    }


def _plan_er(cfg, rng, index, split, pool, sid_set):
    emotion = ER_EMOTIONS[index % len(ER_EMOTIONS)]
    speaker = rng.choice(pool)
    voice = with_emotion(speaker.voice, emotion)
    return {
        "label": emotion,
        "meta": {"prosody": dataclasses.asdict(voice)},
        "utts": [_utt(rng.choice(ER_SENTENCES), speaker, voice)],
    }


def _plan_se(cfg, rng, index, split, pool, sid_set):
    speaker = rng.choice(pool)
    kind = NOISE_TYPES[index % len(NOISE_TYPES)]
    utts = [_utt(draw_sentence(cfg, rng, split), speaker)]
    if kind == "babble":
        others = [s for s in pool if s is not speaker]
        utts += [
            _utt(draw_sentence(cfg, rng, split), s) for s in rng.sample(others, cfg.babble_speakers)
        ]
    return {
        "utts": utts,
        "meta": {"noise": kind, "snr_db": round(rng.uniform(cfg.snr_db_min, cfg.snr_db_max), 2)},
    }


def _plan_ss(cfg, rng, index, split, pool, sid_set):
    first, second = rng.sample(pool, 2)
    return {
        "utts": [
            _utt(draw_sentence(cfg, rng, split), first),
            _utt(draw_sentence(cfg, rng, split), second),
        ],
        "meta": {"relative_gain_db": round(rng.uniform(-2.5, 2.5), 2)},
    }


def _plan_tts(cfg, rng, index, split, pool, sid_set):
    # TTS conditions on a speaker id, so it uses the closed (seen) SID speakers; text is held out.
    return {"utts": [_utt(draw_sentence(cfg, rng, split), sid_set[index % len(sid_set)])]}


PLANNERS = {
    "asr": _plan_asr,
    "ks": _plan_ks,
    "ic": _plan_ic,
    "sid": _plan_sid,
    "sv": _plan_sv,
    "er": _plan_er,
    "se": _plan_se,
    "ss": _plan_ss,
    "tts": _plan_tts,
}


def render(spec: dict) -> dict:
    """One spec -> one schema row (runs in a worker process)."""
    rng = np.random.default_rng(spec["seed"])
    espeak = get_espeak()
    rendered = [espeak.synthesize(text, voice) for text, voice, _ in spec["utts"]]
    texts = [text for text, _, _ in spec["utts"]]
    speakers = [speaker for _, _, speaker in spec["utts"]]
    task, meta = spec["task"], dict(spec["meta"])
    common = {"label": spec["label"], "meta": meta}
    if task == "ks":
        return _render_ks(spec, rendered, speakers, rng, common)
    if task == "sv":
        enroll, test = rendered
        return make_row(
            spec["id"],
            task,
            test.wav,
            text=texts[1],
            speaker=speakers[1],
            words=test.words,
            refs=[enroll.wav],
            ref_speakers=[speakers[0]],
            **common,
        )
    if task == "se":
        clean = rendered[0].wav
        noise = _make_noise(meta["noise"], rng, clean.size, [u.wav for u in rendered[1:]])
        noisy, clean = noise_lib.fit_peak(noise_lib.mix_at_snr(clean, noise, meta["snr_db"]), clean)
        return make_row(
            spec["id"],
            task,
            noisy,
            text=texts[0],
            speaker=speakers[0],
            words=rendered[0].words,
            refs=[clean],
            ref_speakers=[speakers[0]],
            **common,
        )
    if task == "ss":
        length = max(u.wav.size for u in rendered)
        first, second = (np.pad(u.wav, (0, length - u.wav.size)) for u in rendered)
        second = second * 10 ** (meta["relative_gain_db"] / 20)
        mixture, first, second = noise_lib.fit_peak(first + second, first, second)
        meta["texts"] = texts
        return make_row(
            spec["id"], task, mixture, refs=[first, second], ref_speakers=speakers, **common
        )
    return make_row(
        spec["id"],
        task,
        rendered[0].wav,
        text=texts[0],
        speaker=speakers[0],
        words=rendered[0].words,
        **common,
    )


@contextmanager
def row_renderer(workers: int = 2) -> Iterator[Callable[[list[dict]], Iterator[dict]]]:
    """Yield a function mapping specs -> rows in order, rendered by `workers` processes.

    Each row is a pure function of its spec (eSpeak is reloaded per utterance), so the
    output does not depend on the number of workers.
    """
    if workers <= 1:
        yield lambda specs: map(render, specs)
        return
    # fork: workers inherit the imported modules instead of re-importing them.
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield lambda specs: pool.imap(render, specs, chunksize=16)


def _make_noise(
    kind: str, rng: np.random.Generator, length: int, babble_sources: list[np.ndarray]
) -> np.ndarray:
    if kind == "white":
        return noise_lib.white_noise(rng, length)
    if kind == "pink":
        return noise_lib.pink_noise(rng, length)
    return noise_lib.babble_noise(babble_sources, length, rng)


def _render_ks(spec, rendered, speakers, rng, common) -> dict:
    """Speech Commands style: every clip exactly 1 s, the word at a random offset, light noise."""
    meta = common["meta"]
    length = int(KS_CLIP_SECONDS * OUTPUT_SAMPLE_RATE)
    clip = np.zeros(length, np.float32)
    words, text, speaker = [], "", ""
    if rendered:
        speech = rendered[0].wav[:length]
        offset = int(rng.integers(0, length - speech.size + 1))
        clip[offset : offset + speech.size] = speech
        shift = offset / OUTPUT_SAMPLE_RATE
        words = [
            {
                "word": w["word"],
                "start": min(w["start"] + shift, KS_CLIP_SECONDS),
                "end": min(w["end"] + shift, KS_CLIP_SECONDS),
            }
            for w in rendered[0].words
        ]
        text, speaker = spec["utts"][0][0], speakers[0]
    background = _make_noise(meta["noise"], rng, length, [])
    if rendered:
        clip = noise_lib.mix_at_snr(clip, background, meta["noise_snr_db"])
    else:
        clip = background * meta["silence_rms"]
    (clip,) = noise_lib.fit_peak(clip)
    return make_row(spec["id"], "ks", clip, text=text, speaker=speaker, words=words, **common)


MANIFEST = "manifest.json"


def build(
    cfg: SynthConfig, out: str | Path, workers: int = 2, preview: int = 0, force: bool = False
) -> Path:
    """Build the corpus into `out` (atomically) and return it; reuse a matching build.

    One writer at a time (a second build into `out` raises LockedError); an `out` that is a
    file, or a non-empty directory that is not a SynthDASB build, is refused unless `force`."""
    out = Path(out)
    with exclusive_lock(out):
        return _build(cfg, out, workers, preview, force)


def _build(cfg: SynthConfig, out: Path, workers: int, preview: int, force: bool) -> Path:
    wanted = config_hash(cfg)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file, not a corpus directory; use another --out")
    foreign = out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file()
    if foreign and not force:
        raise ConfigError(
            f"{out}: a non-empty directory that is not a SynthDASB build; refusing to replace "
            "it (use another --out, or --force to replace it)"
        )
    if (out / MANIFEST).is_file() and not force:
        found = json.loads((out / MANIFEST).read_text()).get("config_hash")
        if found == wanted:
            print(f"SynthDASB: {out} already built with this config (hash {wanted}); reusing it")
            if preview:
                write_preview(out, preview)
            return out
        raise ConfigError(
            f"{out}: holds a SynthDASB build with config hash {found}, not {wanted}; "
            "use another --out, or --force to rebuild it"
        )
    speakers = cfg.speakers()
    plans = {
        (task, split): plan_task(cfg, task, split, speakers)
        for task in cfg.counts
        for split in SPLITS
    }
    total = sum(len(specs) for specs in plans.values())
    started = time.perf_counter()
    manifest = {"config_hash": wanted, "sample_rate": OUTPUT_SAMPLE_RATE, "tasks": {}}
    with (
        atomic_directory(out) as tmp,
        tqdm(total=total, desc=f"SynthDASB {cfg.size}", unit="row") as bar,
        row_renderer(workers) as render_all,
    ):
        for task in cfg.counts:
            splits, summary = {}, {}
            for split in SPLITS:
                rows = []
                for row in render_all(plans[task, split]):
                    rows.append(row)
                    bar.update()
                splits[split] = rows_to_dataset(rows, f"synthdasb-{wanted}-{task}-{split}")
                summary[split] = _split_summary(rows)
            with _quiet_datasets():
                DatasetDict(splits).save_to_disk(str(tmp / task))
            manifest["tasks"][task] = summary
        atomic_write_text(
            tmp / "speakers.json", json.dumps([s.to_json() for s in speakers], indent=1)
        )
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        save_config(cfg, tmp)
    seconds = time.perf_counter() - started
    hours = sum(s["audio_seconds"] for t in manifest["tasks"].values() for s in t.values()) / 3600
    print(
        f"SynthDASB {cfg.size}: {total} rows, {hours:.2f} h of audio, built in {seconds:.1f} s -> {out}"
    )
    if preview:
        write_preview(out, preview)
    return out


@contextmanager
def _quiet_datasets():
    """One progress bar is enough: silence datasets' per-shard bars while saving."""
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def _split_summary(rows: list[dict]) -> dict:
    seconds = sum(sf.info(io.BytesIO(r["audio"]["bytes"])).duration for r in rows)
    return {
        "rows": len(rows),
        "audio_seconds": round(seconds, 2),
        "labels": sorted({r["label"] for r in rows} - {""}),
    }


def write_preview(root: Path, per_task: int) -> Path:
    """Write the first `per_task` test rows of each task as WAVs (refs too) plus an index."""
    from mmllm.audio.io import write_wav

    folder = root / "preview"
    folder.mkdir(exist_ok=True)
    lines = ["file\ttask\tlabel\tspeaker\ttext"]
    for task in json.loads((root / MANIFEST).read_text())["tasks"]:
        for row in load_task(root, task)["test"].select(range(per_task)):
            name = f"{row['id']}.wav"
            write_wav(
                folder / name, decode_audio_value(row["audio"], name=row["id"]), OUTPUT_SAMPLE_RATE
            )
            lines.append(f"{name}\t{task}\t{row['label']}\t{row['speaker']}\t{row['text']}")
            for k, ref in enumerate(row["refs"]):
                ref_name = f"{row['id']}.ref{k}.wav"
                write_wav(
                    folder / ref_name,
                    decode_audio_value(ref, name=f"{row['id']} ref {k}"),
                    OUTPUT_SAMPLE_RATE,
                )
                lines.append(f"{ref_name}\t{task}\treference {k}\t{row['ref_speakers'][k]}\t")
    atomic_write_text(folder / "index.tsv", "\n".join(lines) + "\n")
    print(f"preview: {len(lines) - 1} WAVs in {folder}")
    return folder
