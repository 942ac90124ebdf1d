"""What `mmllm generate` is asked: its command-line inputs expanded into one request per
prompt, before anything is loaded.

    asr a.wav b.flac            two prompts
    asr clips/                  every audio file in clips/ (sorted by name)
    asr clips.txt               one audio path per line (relative paths: to the list's folder)
    sv enroll.wav trial.wav     one pair; sv pairs.txt: "ENROLLMENT TRIAL" per line
    tts "one" "two"             two texts; --text-file lines.txt: one text per line

Blank lines and lines starting with "#" in list and text files are skipped. Anything wrong
(a missing file, a directory with no audio, a list line without two paths for sv) is a
GenerateError naming the file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")
LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")


class GenerateError(ValueError):
    """Bad input to prompting: the message names the file or field."""


@dataclass(frozen=True)
class Request:
    """One prompt: `name` (what the output line starts with: the audio path, "ENROLL TRIAL"
    for sv, the text for tts) and its `inputs` (audio paths, or the one text)."""

    name: str
    inputs: tuple[str, ...]


def _list_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise GenerateError(f"list file {path}: cannot read it ({err})") from None
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _audio_file(path: Path, where: str) -> str:
    if path.is_dir():
        raise GenerateError(f"{where}{path}: is a directory, not an audio file")
    if not path.is_file():
        raise GenerateError(f"{where}{path}: file not found")
    return str(path)


def _listed(path: Path, number: int, entry: str) -> Path:
    listed = Path(entry).expanduser()
    return listed if listed.is_absolute() else path.parent / listed


def expand_requests(
    task: str, inputs: Sequence[str], text_file: str | None = None
) -> tuple[list[Request], bool]:
    """-> (requests, batch): `batch` is False only for the one-prompt form (one audio file,
    one sv pair, one text), whose answer prints alone."""
    if task == "tts":
        texts = [(text, "") for text in inputs]
        if text_file is not None:
            path = Path(text_file)
            texts += [(line, f"{path}:{n}: ") for n, line in _list_lines(path)]
        for text, where in texts:
            if not text.strip():
                raise GenerateError(f"{where}tts: the text to speak is empty")
        if not texts:
            raise GenerateError("tts: no text to speak (give TEXT or --text-file)")
        requests = [Request(text, (text,)) for text, _ in texts]
        return requests, len(requests) > 1 or text_file is not None
    if text_file is not None:
        raise GenerateError(f"--text-file: only tts speaks text; task {task} takes audio")
    if not inputs:
        what = "ENROLLMENT.wav TRIAL.wav" if task == "sv" else "AUDIO"
        raise GenerateError(f"task {task} takes {what} (files, directories or list files)")
    if task == "sv":
        return _sv_requests(inputs)
    requests: list[Request] = []
    batch = len(inputs) > 1
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            batch = True
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise GenerateError(
                    f"input directory {path}: no audio files ({', '.join(AUDIO_SUFFIXES)})"
                )
            requests += [Request(str(p), (str(p),)) for p in files]
        elif path.suffix.lower() in LIST_SUFFIXES:
            batch = True
            for number, entry in _list_lines(path):
                listed = _audio_file(_listed(path, number, entry), f"{path}:{number}: ")
                requests.append(Request(listed, (listed,)))
        else:
            requests.append(Request(item, (_audio_file(path, "input audio "),)))
    return requests, batch


def _sv_requests(inputs: Sequence[str]) -> tuple[list[Request], bool]:
    if len(inputs) == 2 and not any(Path(i).suffix.lower() in LIST_SUFFIXES for i in inputs):
        pair = tuple(_audio_file(Path(i), "input audio ") for i in inputs)
        return [Request(" ".join(pair), pair)], False
    requests = []
    for item in inputs:
        path = Path(item)
        if path.suffix.lower() not in LIST_SUFFIXES:
            raise GenerateError(
                f"task sv takes ENROLLMENT.wav TRIAL.wav, or list files of such pairs; got {item}"
            )
        for number, entry in _list_lines(path):
            fields = entry.split()
            if len(fields) != 2:
                raise GenerateError(
                    f"{path}:{number}: expected ENROLLMENT TRIAL (two paths), got {entry!r}"
                )
            where = f"{path}:{number}: "
            pair = tuple(_audio_file(_listed(path, number, f), where) for f in fields)
            requests.append(Request(" ".join(pair), pair))
    return requests, True
