"""How a checkpoint trained on eSpeak speech does on speech from another synthesizer.

    python bench/other_synthesizer.py --checkpoint runs/pretrain/default/final [--install]

Renders, with Debian's Festival voices (never used to train; `--install` runs `apt-get install`
for Festival and the voices), 100 keyword clips (the 10 commands, 1 s each, 10 per
command over the voices) and 100 ASR sentences (the corpus's ASR test transcripts), resampled
to 16 kHz and normalised to the corpus's peak level. Then prompts the checkpoint with
`mmllm generate --jsonl` (one batched call per task) and scores KS accuracy and ASR WER;
the same number of the corpus's own eSpeak test clips are scored beside them, so the gap is
the synthesizer's. Writes the figures under `"other_synthesizer"` in `--json`
(bench/results/default_run.json by default), keeping the rest of that file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


VOICES = {  # festival voice -> the Debian package that holds it
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}


PEAK = 0.5  # SynthDASB's clips peak near here; Festival's are louder


def install() -> None:
    """apt-get install Festival and its voices (a no-op for what is there already)."""
    packages = ["festival", *VOICES.values()]
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=True)


def available_voices() -> list[str]:
    voices = []
    for voice in VOICES:
        probe = subprocess.run(
            ["text2wave", "-eval", f"({'voice_' + voice})", "-o", "/dev/null"],
            input="yes",
            text=True,
            capture_output=True,
        )
        if probe.returncode == 0 and "not defined" not in probe.stderr:
            voices.append(voice)
    if not voices:
        raise SystemExit("no Festival voice works: run with --install (needs apt-get)")
    return voices


def render(text: str, voice: str, path: Path, seconds: float | None = None) -> None:
    """text -> 16 kHz mono WAV at `path` (centred in `seconds` of silence when given)."""
    from mmllm.audio.io import load_audio, write_wav

    raw = path.with_suffix(".raw.wav")
    subprocess.run(
        ["text2wave", "-eval", f"(voice_{voice})", "-o", str(raw)],
        input=text,
        text=True,
        check=True,
        capture_output=True,
    )
    wav, _ = load_audio(raw, target_sr=16000)
    raw.unlink()
    wav = wav / max(float(np.abs(wav).max()), 1e-6) * PEAK
    if seconds is not None:
        frames = int(seconds * 16000)
        wav = wav[:frames]
        start = (frames - len(wav)) // 2
        wav = np.pad(wav, (start, frames - len(wav) - start))
    write_wav(path, wav.astype(np.float32), 16000)


def ask(checkpoint: Path, task: str, paths: list[Path], folder: Path) -> dict[str, str]:
    """input path -> answer, from one batched `mmllm generate --jsonl` call over a list file."""
    listing = folder / f"{task}.lst"
    listing.write_text("".join(f"{p}\n" for p in paths))
    command = [sys.executable, "-m", "mmllm", "generate", "--checkpoint", str(checkpoint)]
    result = subprocess.run(
        [*command, task, str(listing), "--jsonl"], check=True, capture_output=True, text=True
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return {Path(line["input"]).name: line["answer"] for line in lines}


def score(checkpoint: Path, ks: list[tuple[Path, str]], asr: list[tuple[Path, str]], folder):
    from mmllm.eval import metrics

    ks_answers = ask(checkpoint, "ks", [p for p, _ in ks], folder)
    asr_answers = ask(checkpoint, "asr", [p for p, _ in asr], folder)
    correct = sum(ks_answers[p.name] == label for p, label in ks)
    wer = metrics.wer([t for _, t in asr], [asr_answers[p.name] for p, _ in asr])
    distinct = len({asr_answers[p.name] for p, _ in asr})  # one answer for all: not listening
    return {"ks_acc": correct / len(ks), "asr_wer": wer.rate, "asr_distinct_answers": distinct}


def espeak_clips(corpus: Path, count: int, folder: Path):
    """The corpus's own test clips (KS commands, ASR) as WAVs, for the in-domain figures."""
    from mmllm.corpus.labels import KS_COMMANDS
    from mmllm.corpus.reader import load_task
    from mmllm.pretrain.examples import write_clip

    ks_rows = [r for r in load_task(corpus, "ks")["test"] if r["label"] in KS_COMMANDS][:count]
    asr_rows = list(load_task(corpus, "asr")["test"].select(range(count)))
    ks = [
        (write_clip(folder / f"espeak-ks-{i:03d}.wav", r), r["label"])
        for i, r in enumerate(ks_rows)
    ]
    asr = [
        (write_clip(folder / f"espeak-asr-{i:03d}.wav", r), r["text"])
        for i, r in enumerate(asr_rows)
    ]
    return ks, asr, [r["text"] for r in asr_rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs/pretrain/default/final")
    parser.add_argument("--corpus", type=Path, default=ROOT / "data/synthdasb-small-grid")
    parser.add_argument("--clips", type=int, default=100, help="per task")
    parser.add_argument("--install", action="store_true", help="apt-get install Festival")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/default_run.json")
    parser.add_argument("--label", default="before", help="key of this measurement")
    args = parser.parse_args()
    from mmllm.corpus.labels import KS_COMMANDS
    from mmllm.runtime import utc_timestamp

    if args.install:
        install()
    voices = available_voices()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        espeak_ks, espeak_asr, texts = espeak_clips(args.corpus, args.clips, folder)
        ks, asr = [], []
        for i in range(args.clips):
            voice = voices[i % len(voices)]
            word = KS_COMMANDS[i % len(KS_COMMANDS)]
            ks.append((folder / f"festival-ks-{i:03d}.wav", word))
            render(word, voice, ks[-1][0], seconds=1.0)
            asr.append((folder / f"festival-asr-{i:03d}.wav", texts[i % len(texts)]))
            render(asr[-1][1], voice, asr[-1][0])
        festival = score(args.checkpoint, ks, asr, folder)
        espeak = score(args.checkpoint, espeak_ks, espeak_asr, folder)
    report = json.loads(args.json.read_text()) if args.json.is_file() else {}
    entry = report.setdefault("other_synthesizer", {})
    entry[args.label] = {
        "measured": utc_timestamp(),
        "checkpoint": str(args.checkpoint),
        "festival_voices": voices,
        "clips_per_task": args.clips,
        "festival": festival,
        "espeak_test_clips": espeak,
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(entry[args.label], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
