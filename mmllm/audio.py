"""Audio I/O and spectral features: the one place mmllm reads, resamples and featurizes audio.

Everything returns float32 mono waveforms in [-1, 1]. Bad input raises `AudioError` with
the file (or row) name and the problem, so a corpus with one broken file says which one.

Features use `torch.stft` (batched, runs wherever the tensor lives) with the mel filter
bank from `transformers.audio_utils`; `tests/test_audio.py` checks both against the
independent numpy implementation in transformers and scipy's DCT.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

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
        wav, sample_rate = sf.read(handle, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{name}: cannot decode audio ({err})") from err
    wav = to_mono(np.asarray(wav, dtype=np.float32))
    return _validated(wav, sample_rate, target_sr, name), int(target_sr or sample_rate)


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


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    """Write a 16-bit WAV atomically (temporary file, then rename)."""
    atomic_write_bytes(path, encode_wav(wav, sample_rate))


# ----------------------------------------------------------------------------- features


@lru_cache(maxsize=16)
def mel_filters(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float
) -> torch.Tensor:
    """Slaney-style mel filter bank [n_fft // 2 + 1, n_mels] (transformers.audio_utils)."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=f_min,
        max_frequency=f_max,
        sampling_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(bank.astype(np.float32))


def log_mel(
    wav: torch.Tensor,
    sample_rate: int = 16000,
    n_fft: int = 400,
    hop_length: int = 160,
    n_mels: int = 80,
    f_min: float = 0.0,
    f_max: float | None = None,
    floor: float = 1e-10,
) -> torch.Tensor:
    """Natural-log mel power spectrogram.

    wav: [T] or [B, T] float32 -> [n_mels, F] or [B, n_mels, F] with F = T // hop_length + 1
    (centered frames, reflect padding, periodic Hann window of n_fft samples).
    """
    squeeze = wav.dim() == 1
    batch = wav.unsqueeze(0) if squeeze else wav
    window = torch.hann_window(n_fft, periodic=True, device=batch.device, dtype=batch.dtype)
    spec = torch.stft(
        batch,
        n_fft,
        hop_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()  # [B, n_fft // 2 + 1, F]
    bank = mel_filters(sample_rate, n_fft, n_mels, f_min, f_max or sample_rate / 2).to(batch)
    mel = torch.einsum("bkf,km->bmf", power, bank)
    out = torch.log(torch.clamp(mel, min=floor))
    return out[0] if squeeze else out


@lru_cache(maxsize=8)
def dct_matrix(n_input: int, n_output: int) -> torch.Tensor:
    """Orthonormal DCT-II basis [n_input, n_output] (matches scipy.fft.dct(norm='ortho'))."""
    n = torch.arange(n_input, dtype=torch.float64)
    k = torch.arange(n_output, dtype=torch.float64)
    basis = torch.cos(math.pi / n_input * (n[:, None] + 0.5) * k[None, :])
    basis *= math.sqrt(2.0 / n_input)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float()


def mfcc(
    wav: torch.Tensor, sample_rate: int = 16000, n_mfcc: int = 13, n_mels: int = 40, **mel_kwargs
) -> torch.Tensor:
    """MFCC = DCT-II (ortho) of the log-mel spectrogram.

    wav: [T] or [B, T] -> [n_mfcc, F] or [B, n_mfcc, F].
    """
    logmel = log_mel(wav, sample_rate, n_mels=n_mels, **mel_kwargs)
    basis = dct_matrix(n_mels, n_mfcc).to(logmel)
    return torch.einsum("...mf,mc->...cf", logmel, basis)


class FeatureStats:
    """Running per-dimension sums (float64) over every feature frame [n, dim] streamed past:
    the corpus statistics mfcc-kmeans normalises MFCCs with, and those the continuous
    projector standardises its inputs with (mmllm.continuous.feature_statistics)."""

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.squares = torch.zeros(dim, dtype=torch.float64)

    def update(self, frames: torch.Tensor) -> None:
        frames = frames.double().cpu()
        self.count += frames.shape[0]
        self.total += frames.sum(dim=0)
        self.squares += frames.square().sum(dim=0)

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [dim], population sd [dim]) as float32; the variance floored at 1e-12."""
        mean = self.total / self.count
        variance = (self.squares / self.count - mean.square()).clamp(min=1e-12)
        return mean.float(), variance.sqrt().float()
