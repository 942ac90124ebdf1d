"""Seeded augmentation of input audio for training documents (`data.augment`).

Why: the model fits the training rows long before it generalises to unseen speakers. A
KS-only run of the default model reaches a training loss of 0.01 while the held-out loss
(valid split, unseen speakers) rises again after ~50 steps. Token and feature caches are
computed once, so the augmentation works on what the cache holds, frames [C, F] (codes
[K, F] or continuous features [D, F]), the same way for every input kind, so discrete and
continuous runs of a comparison get the same treatment:

    speed       resample the frame axis by a factor r ~ U[lo, hi] (nearest frame: r > 1 drops
                frames, r < 1 repeats them): speaking-rate variation, like speed perturbation
                of the waveform but on the cached frames
    time masks  spans of 1..mask_span frames cover about `mask_ratio` of the frames
                (SpecAugment's time masking): codes there become random codes of the same
                codebook, features become the utterance's mean frame

Only the input audio of tasks whose answer is text (asr, ks, ic, er, sid, sv) is
augmented: SE/SS answers are aligned to their input, and `asr_spans` / LM documents cut the
speech at word times. Held-out documents are never augmented. Each (row seed, key) gets its
own draw, so an epoch's documents are rebuilt exactly on resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import numpy as np

from mmllm.config import config_dataclass
from mmllm.corpus.schema import AUDIO_ANSWER_TASKS, TASKS

AUGMENTED_TASKS = tuple(t for t in TASKS if t not in AUDIO_ANSWER_TASKS)  # text answers


@config_dataclass
class AudioAugment:
    """speed:       [lo, hi] resampling factors of the frame axis (1 = unchanged)
    mask_ratio:  share of frames under time masks (0 = none)
    mask_span:   longest time mask, in frames"""

    speed: list[float] = dataclasses.field(default_factory=lambda: [1.0, 1.0])
    mask_ratio: float = 0.0
    mask_span: int = 5

    def __post_init__(self) -> None:
        if len(self.speed) != 2 or not 0 < self.speed[0] <= self.speed[1]:
            raise ValueError(f"key 'data.augment.speed': need 0 < lo <= hi, got {list(self.speed)}")
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(
                f"key 'data.augment.mask_ratio': need 0 <= x < 1, got {self.mask_ratio}"
            )
        if self.mask_span < 1:
            raise ValueError(f"key 'data.augment.mask_span': need >= 1, got {self.mask_span}")


def row_rng(seed: object, key: str) -> np.random.Generator:
    """A generator that depends only on (seed, key): stable across processes and runs."""
    digest = hashlib.sha256(f"augment|{seed}|{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def resample_frames(frames: np.ndarray, rate: float) -> np.ndarray:
    """frames [C, F] -> [C, max(1, round(F / rate))], nearest earlier frame."""
    count = frames.shape[1]
    new_count = max(1, round(count / rate))
    index = np.minimum((np.arange(new_count) * rate).astype(np.int64), count - 1)
    return frames[:, index]


def time_mask(
    frames: np.ndarray, mask: np.ndarray, rng: np.random.Generator, codebook_size: int | None
) -> np.ndarray:
    """Replace the frames where mask [F] is True: random codes in [0, codebook_size) for
    codes (codebook_size given), the mean frame for features."""
    out = frames.copy()
    if not mask.any():
        return out
    if codebook_size is not None:
        out[:, mask] = rng.integers(0, codebook_size, size=(frames.shape[0], int(mask.sum())))
    else:
        out[:, mask] = frames.mean(axis=1, keepdims=True).astype(frames.dtype)
    return out


def mask_positions(count: int, augment: AudioAugment, rng: np.random.Generator) -> np.ndarray:
    """[count] bool: spans of 1..mask_span frames covering about mask_ratio of the frames."""
    mask = np.zeros(count, dtype=bool)
    mean_span = (1 + augment.mask_span) / 2
    for _ in range(rng.poisson(augment.mask_ratio * count / mean_span)):
        length = int(rng.integers(1, augment.mask_span + 1))
        start = int(rng.integers(0, max(1, count - length + 1)))
        mask[start : start + length] = True
    return mask


def augment_frames(
    frames: np.ndarray, augment: AudioAugment, rng: np.random.Generator, codebook_size: int | None
) -> np.ndarray:
    """frames [C, F] (codes if codebook_size is given, else features) -> augmented [C, F']."""
    lo, hi = augment.speed
    out = resample_frames(frames, float(rng.uniform(lo, hi))) if hi > lo or lo != 1.0 else frames
    if augment.mask_ratio > 0:
        out = time_mask(out, mask_positions(out.shape[1], augment, rng), rng, codebook_size)
    return out


def augmented_lookup(
    lookup: Callable[[str], np.ndarray],
    augment: AudioAugment,
    seed: object,
    codebook_size: int | None,
) -> Callable[[str], np.ndarray]:
    """Wrap a cache lookup (key -> frames [C, F]) so every key comes back augmented with its
    own draw for this seed."""

    def get(key: str) -> np.ndarray:
        return augment_frames(lookup(key), augment, row_rng(seed, key), codebook_size)

    return get
