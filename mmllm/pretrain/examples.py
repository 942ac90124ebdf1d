"""What the main job leaves the user to try: a few test clips (voices the model never heard)
written as WAVs under the run directory, and ready-to-run `mmllm generate` commands for them
with the answers the corpus says are right.

    write_examples(run_dir, corpus, checkpoint, sources, speaks) -> the lines to print
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from mmllm.audio.io import decode_audio_value, write_wav
from mmllm.corpus.reader import load_task

EXAMPLES_DIR = "examples"
KS_CLIPS = 4  # a directory of clips: one batched call, a line per clip


def write_clip(path: Path, row: dict) -> Path:
    """A corpus row's input audio as a 16 kHz WAV at `path` -> path."""
    write_wav(path, decode_audio_value(row["audio"], 16000, name=row["id"]), 16000)
    return path


def write_examples(
    run_dir: Path, corpus: Path, checkpoint: Path, sources: list[str], speaker: str | None
) -> list[str]:
    """Write test clips of the trained tasks to run_dir/examples and return the prompt
    commands (with the expected answers) to print; a TTS command too when `speaker` (a
    training voice) is given: the checkpoint's output tokens decode to audio."""
    out = run_dir / EXAMPLES_DIR
    out.mkdir(parents=True, exist_ok=True)
    command = f"mmllm generate --checkpoint {shlex.quote(str(checkpoint))}"
    lines = ["Try the model on test clips of voices it never heard (expected answers after #):"]
    if "asr" in sources:
        row = load_task(corpus, "asr")["test"][0]
        clip = write_clip(out / "asr.wav", row)
        lines.append(f"  {command} asr {clip}    # {row['text']}")
    if "ks" in sources:
        rows = load_task(corpus, "ks")["test"]
        folder = out / "ks"
        shutil.rmtree(folder, ignore_errors=True)  # the folder is one prompt: only these clips
        folder.mkdir()
        expected: list[str] = []  # the first clips of KS_CLIPS different labels
        for i, label in enumerate(rows["label"]):
            if label not in expected:
                write_clip(folder / f"{len(expected)}-{label}.wav", rows[i])
                expected.append(label)
            if len(expected) == KS_CLIPS:
                break
        lines.append(f"  {command} ks {folder}    # {' '.join(expected)} (a line per clip)")
    if "ic" in sources:
        row = load_task(corpus, "ic")["test"][0]
        clip = write_clip(out / "ic.wav", row)
        lines.append(f"  {command} ic {clip}    # {row['label']}")
    if "tts" in sources and speaker:
        text = shlex.quote(load_task(corpus, "tts")["test"][0]["text"])
        target = out / "tts.wav"
        lines.append(f"  {command} tts {text} --speaker {shlex.quote(speaker)} --out {target}")
    return lines
