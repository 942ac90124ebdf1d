"""Audio I/O: the one place mmllm reads, resamples and writes audio.

Everything returns float32 mono waveforms in [-1, 1]. Bad input raises `AudioError` with
the file (or row) name and the problem, so a corpus with one broken file says which one.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from mmllm.fileio import atomic_write_bytes

# Speech below 4 kHz sampling has no usable content; above 384 kHz is not audio we expect.
MIN_SAMPLE_RATE = 4000


MAX_SAMPLE_RATE = 384000


class AudioError(ValueError):
    """Bad audio input; the message starts with the file or row it came from."""


def _check_sample_rate(sample_rate: int, name: str) -> None:
    if not (MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE):
        raise AudioError(
            f"{name}: unsupported sample rate {sample_rate} Hz "
            f"(supported: {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)"
        )


def to_mono(wav: np.ndarray) -> np.ndarray:
    """[T] or [T, C] (soundfile's layout) -> [T] by averaging channels."""
    return wav if wav.ndim == 1 else wav.mean(axis=1)


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample [T] float32 with soxr (high quality, deterministic)."""
    if orig_sr == target_sr or wav.size == 0:
        return wav.astype(np.float32, copy=False)
    return soxr.resample(wav.astype(np.float32, copy=False), orig_sr, target_sr, quality="HQ")


def load_audio(
    source: str | Path | bytes, target_sr: int | None = 16000, name: str | None = None
) -> tuple[np.ndarray, int]:
    """Read anything soundfile reads (path or encoded bytes) -> (wav [T] float32 mono, sample_rate).

    `target_sr=None` keeps the file's rate. `name` labels errors for in-memory bytes
    (e.g. a corpus row id). Raises `AudioError` for a missing file, undecodable bytes,
    zero samples, NaN/Inf samples or an unsupported sample rate.
    """
    if isinstance(source, (bytes, bytearray)):
        name = name or "<audio bytes>"
        handle = io.BytesIO(source)
    else:
        name = name or str(source)
        if not Path(source).is_file():
            raise AudioError(f"{name}: file not found")
        handle = str(source)
    try:
        _check_complete(sf.info(handle), name)
        if isinstance(handle, io.BytesIO):
            handle.seek(0)
        wav, sample_rate = sf.read(handle, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        # libsndfile's message names the file object ("<_io.BytesIO object at 0x7f...>"): the
        # address would make two identical extractions record different errors
        reason = re.sub(r"<[^>]* at 0x[0-9a-f]+>", "the audio bytes", str(err))
        raise AudioError(f"{name}: cannot decode audio ({reason})") from err
    wav = to_mono(np.asarray(wav, dtype=np.float32))
    return _validated(wav, sample_rate, target_sr, name), int(target_sr or sample_rate)


# libsndfile notes a WAV whose data chunk is shorter than its header says as
# "data : DECLARED (should be FOUND)"; streaming writers leave 0 or 0xFFFFFFFF there.
_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
_STREAMING_SIZES = (0, 0xFFFFFFFF)


def _check_complete(info: Any, name: str) -> None:
    """Refuse a WAV cut short (a partial copy or download): libsndfile would silently decode
    the part that is there."""
    short = _SHORT_DATA.search(info.extra_info or "")
    if short is None or int(short.group(1)) in _STREAMING_SIZES:
        return
    declared, found = int(short.group(1)), int(short.group(2))
    if found < declared:
        raise AudioError(
            f"{name}: truncated audio file: {info.frames} frames found, the header declares "
            f"{info.frames * declared // max(found, 1)} ({found} of {declared} data bytes)"
        )


def decode_audio_value(
    value: dict, target_sr: int | None = 16000, name: str | None = None
) -> np.ndarray:
    """Decode a `datasets.Audio(decode=False)` cell ({'bytes', 'path'}) -> wav [T] float32."""
    if value is None:
        raise AudioError(f"{name or '<row>'}: audio is missing (null)")
    source = value.get("bytes") or value.get("path")
    if source is None:
        raise AudioError(f"{name or '<row>'}: audio has neither bytes nor path")
    return load_audio(source, target_sr, name=name or value.get("path"))[0]


def _validated(wav: np.ndarray, sample_rate: int, target_sr: int | None, name: str) -> np.ndarray:
    _check_sample_rate(sample_rate, name)
    if wav.size == 0:
        raise AudioError(f"{name}: audio has zero samples")
    if not np.isfinite(wav).all():
        bad = int((~np.isfinite(wav)).sum())
        raise AudioError(f"{name}: audio contains {bad} NaN/Inf samples")
    if target_sr is not None:
        _check_sample_rate(target_sr, f"{name} (target)")
        wav = resample(wav, sample_rate, target_sr)
    return np.clip(wav, -1.0, 1.0).astype(np.float32, copy=False)


def prepare_waveform(
    wav: np.ndarray, sample_rate: int, target_sr: int = 16000, name: str = "<waveform>"
) -> np.ndarray:
    """Validate an in-memory waveform ([T] or [T, C]) like a file: mono, finite, resampled."""
    return _validated(to_mono(np.asarray(wav, dtype=np.float32)), sample_rate, target_sr, name)


def encode_wav(wav: np.ndarray, sample_rate: int) -> bytes:
    """[T] float32 in [-1, 1] -> 16-bit PCM WAV bytes (deterministic, no timestamps)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wav, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def encode_flac(wav: np.ndarray, sample_rate: int) -> bytes:
    """[T] float32 in [-1, 1] -> 16-bit FLAC bytes: lossless over 16-bit PCM, about half
    a WAV's size (how converted corpora keep their audio)."""
    # quantised by the WAV writer (cheap: a copy), so a FLAC cell holds exactly the samples
    # a WAV cell would; libsndfile's FLAC writer rounds floats differently (1 LSB off)
    pcm, _ = sf.read(io.BytesIO(encode_wav(wav, sample_rate)), dtype="int16")
    buffer = io.BytesIO()
    sf.write(buffer, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    """Write a 16-bit WAV atomically (temporary file, then rename)."""
    atomic_write_bytes(path, encode_wav(wav, sample_rate))
