"""Spectral features and DSP on torch tensors: mel filter banks, log-mel, DCT/MFCC,
per-item framed power spectra, deltas, utterance CMVN, feature statistics and
Griffin-Lim. Batched functions treat each item's padding as its own (batch == alone).

Features use `torch.stft` (batched, runs wherever the tensor lives) with the mel filter
bank from `transformers.audio_utils`; `tests/test_audio.py` checks both against the
independent numpy implementation in transformers and scipy's DCT.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


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
    projector standardises its inputs with (mmllm.modeling.continuous.feature_statistics)."""

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


MFCC_DELTA_WIDTH = 2  # `options.deltas`: regression over +-2 frames (HTK / Kaldi default)


GRIFFIN_LIM_ITERS = 32


GRIFFIN_LIM_MOMENTUM = 0.99


GRIFFIN_LIM_SEED = 0


def framed_power(
    wav: torch.Tensor, lengths: torch.Tensor, n_fft: int, hop: int, num_frames: torch.Tensor
) -> torch.Tensor:
    """Power spectrogram frames computed item by item's own padding (see module docstring).

    wav [B, T], lengths [B], num_frames [B] -> power [B, max(num_frames), n_fft // 2 + 1];
    frame f of item b is centred on sample f * hop of that item. Rows at or beyond
    num_frames[b] are padding (computed from zeros, never from another item's samples).
    """
    batch = wav.shape[0]
    max_frames = int(num_frames.max()) if batch else 0
    n_freq = n_fft // 2 + 1
    if max_frames == 0:
        return wav.new_zeros(batch, 0, n_freq, dtype=torch.float64)
    pad = n_fft // 2
    total = (max_frames - 1) * hop + n_fft
    buffer = wav.new_zeros(batch, total, dtype=torch.float64)
    for b in range(batch):
        length = int(lengths[b])
        if length == 0:
            continue
        mode = "reflect" if length > pad else "constant"
        padded = F.pad(wav[b, :length][None, None], (pad, pad), mode=mode)[0, 0]
        keep = min(padded.numel(), total)
        buffer[b, :keep] = padded[:keep]
    window = torch.hann_window(n_fft, periodic=True, device=wav.device, dtype=torch.float64)
    spec = torch.stft(buffer, n_fft, hop, window=window, center=False, return_complex=True)
    power = spec.real.square() + spec.imag.square()  # [B, n_freq, frames]
    return power[..., :max_frames].transpose(1, 2)


def append_deltas(
    features: torch.Tensor, frame_lengths: torch.Tensor, width: int = MFCC_DELTA_WIDTH
) -> torch.Tensor:
    """features [B, N, D], frame_lengths [B] (valid frames of each item) -> [B, N, 3 D]:
    the features, their deltas and delta-deltas. delta_t = sum_k k (x_{t+k} - x_{t-k}) /
    (2 sum_k k^2), k = 1..width, with each item's first and last valid frame repeated
    beyond its edges (its own frames only: batch == alone); delta-delta is the delta of the
    delta. Frames at or beyond an item's length are padding and hold no meaning."""
    last = (frame_lengths.to(features.device).long() - 1).clamp(min=0)[:, None]  # [B, 1]
    steps = torch.arange(features.shape[1], device=features.device)[None, :]  # [1, N]
    norm = 2 * sum(k * k for k in range(1, width + 1))

    def delta(x: torch.Tensor) -> torch.Tensor:
        def shifted(offset: int) -> torch.Tensor:
            index = (steps + offset).clamp(min=0).minimum(last)  # [B, N]
            return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))

        return sum(k * (shifted(k) - shifted(-k)) for k in range(1, width + 1)) / norm

    first = delta(features)
    return torch.cat([features, first, delta(first)], dim=-1)


def utterance_cmvn(features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """features [B, F, D], frame_lengths [B] -> per-utterance mean/variance normalised
    features (CMVN over each item's own valid frames, so batch == alone); frames beyond an
    item's length are set to 0. Used by mfcc-kmeans (`options.cmvn: utterance`) and the
    continuous feature backends."""
    frames = torch.arange(features.shape[1], device=features.device)
    valid = (frames[None, :] < frame_lengths[:, None].to(features.device))[..., None]
    count = valid.sum(1, keepdim=True).clamp(min=1)
    mean = (features * valid).sum(1, keepdim=True) / count
    var = ((features - mean).square() * valid).sum(1, keepdim=True) / count
    return torch.where(valid, (features - mean) / (var + 1e-5).sqrt(), 0.0)


def griffin_lim(
    magnitude: torch.Tensor,
    length: int,
    n_fft: int,
    hop: int,
    iterations: int = GRIFFIN_LIM_ITERS,
    seed: int = GRIFFIN_LIM_SEED,
    momentum: float = GRIFFIN_LIM_MOMENTUM,
) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013). magnitude [B, n_fft // 2 + 1, F] of centred
    frames -> waveform [B, length]. Random initial phase from a CPU generator seeded `seed`."""
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator).to(magnitude.device)
    angles = torch.polar(torch.ones_like(magnitude), 2 * math.pi * phase)
    window = torch.hann_window(n_fft, periodic=True, device=magnitude.device)
    num_frames = magnitude.shape[-1]
    previous = torch.zeros_like(angles)
    for _ in range(iterations):
        wav = torch.istft(magnitude * angles, n_fft, hop, window=window, length=length)
        rebuilt = torch.stft(
            wav, n_fft, hop, window=window, center=True, pad_mode="reflect", return_complex=True
        )[..., :num_frames]
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / angles.abs().clamp(min=1e-16)
        previous = rebuilt
    return torch.istft(magnitude * angles, n_fft, hop, window=window, length=length)
