"""Noise the project makes itself (no noise corpus to download) and mixing at a given SNR.

All functions take a `numpy.random.Generator` so that a seeded build is byte-identical.
"""

from __future__ import annotations

import numpy as np


def white_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """[T] float32 Gaussian white noise with unit RMS."""
    return rng.standard_normal(num_samples).astype(np.float32)


def pink_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """[T] float32 1/f (pink) noise with unit RMS, by shaping white noise's spectrum."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0  # leave DC finite; it is removed below
    spectrum /= np.sqrt(freqs)
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n=num_samples)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def babble_noise(
    utterances: list[np.ndarray], num_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """[T] float32 babble: several other speakers' utterances, each looped and offset, summed."""
    babble = np.zeros(num_samples, np.float32)
    for utterance in utterances:
        if utterance.size == 0:
            continue
        offset = int(rng.integers(0, utterance.size))
        reps = int(np.ceil((num_samples + offset) / utterance.size))
        babble += np.tile(utterance, reps)[offset : offset + num_samples] / (rms(utterance) + 1e-12)
    return babble / (rms(babble) + 1e-12)


def rms(wav: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """clean [T] + noise [T] scaled so that 10*log10(P_clean / P_noise) == snr_db."""
    if clean.shape != noise.shape:
        raise ValueError(f"mix_at_snr: clean {clean.shape} and noise {noise.shape} differ in shape")
    gain = rms(clean) / (rms(noise) + 1e-12) / (10 ** (snr_db / 20))
    return (clean + gain * noise).astype(np.float32)


def fit_peak(*wavs: np.ndarray, peak: float = 0.95) -> list[np.ndarray]:
    """Scale several signals by one common factor so the loudest peak is at most `peak`.

    Keeps the relation between a mixture and its references (SE, SS) exact.
    """
    top = max((float(np.abs(w).max()) for w in wavs if w.size), default=0.0)
    scale = peak / top if top > peak else 1.0
    return [(w * scale).astype(np.float32) for w in wavs]
