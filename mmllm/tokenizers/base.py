"""The one interface every audio tokenizer implements, its config, and the registry.

    tokenizer = build_tokenizer(TokenizerConfig(name="encodec", weights="facebook/encodec_24khz",
                                                bandwidth_kbps=6.0))
    codes, frame_lengths = tokenizer.encode(wav, lengths)   # wav [B, T] at tokenizer.sample_rate
    audio, audio_lengths = tokenizer.decode(codes, frame_lengths)

Codes are int64 `[B, K, F]` (K = num_codebooks, F = frames of the longest item); frames at
or beyond `frame_lengths[b]` are padding and hold `PAD_CODE`. Batched encoding with
right-padding gives exactly the codes of encoding each item alone (tested per backend).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from mmllm.config import config_dataclass

PAD_CODE = -1  # marks frames beyond an item's length in a batch


@config_dataclass
class TokenizerConfig:
    """Which tokenizer, and how it is set up. Fields a backend does not use must stay unset.

    name:            registry key (see `TOKENIZERS`): mfcc-kmeans, mel-rvq, encodec, dac,
                     mimi, hubert-kmeans, wavlm-kmeans, wav2vec2-kmeans, speechtokenizer;
                     continuous features: mfcc-features, log-mel-features, hubert-features,
                     wavlm-features, wav2vec2-features
    weights:         hub id or local directory of pretrained weights (compression / SSL
                     backends), or the directory of fitted k-means centroids
    num_codebooks:   how many codebooks to keep (Mimi, DAC, mel-rvq)
    bandwidth_kbps:  EnCodec target bandwidth (1.5, 3, 6, 12, 24); never left implicit
    layers:          SSL layers to cluster, one codebook each (*-features: to cache side by side)
    codebook_size:   k of the k-means backends
    deduplicate:     collapse runs of repeated units (semantic tokens)
    centroids:       directory with centroids.safetensors + card.json (k-means backends)
    vocoder:         directory of a trained token vocoder (tokenizers/train_vocoder.py):
                     decode() runs it (k-means tokenizers; mel-rvq then skips Griffin-Lim)
    device:          where encoding runs: "auto" (CUDA where present, else the CPU), "cpu",
                     "cuda", "cuda:1"
    trust_remote_code: only for hub models that need it; off unless asked for
    """

    name: str
    weights: str | None = None
    num_codebooks: int | None = None
    bandwidth_kbps: float | None = None
    layers: list[int] = dataclasses.field(default_factory=list)
    codebook_size: int | None = None
    deduplicate: bool = False
    centroids: str | None = None
    vocoder: str | None = None
    device: str = "auto"
    trust_remote_code: bool = False
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


class AudioTokenizer(ABC):
    """Waveforms <-> discrete codes. Subclasses set the five properties in __init__."""

    name: str
    sample_rate: int  # Hz of the waveforms encode() takes and decode() returns
    frame_rate_hz: float  # code frames per second of audio
    num_codebooks: int  # K
    codebook_size: int  # codes per codebook
    can_decode: bool = False
    continuous: bool = (
        False  # True: encode gives features [B, D, F] (D in num_codebooks), not codes
    )
    vocoder: Any = None  # mmllm.vocoder.TokenVocoder, loaded from cfg.vocoder by build_tokenizer

    def __init__(self, cfg: TokenizerConfig) -> None:
        self.cfg = cfg

    def attach_vocoder(self, directory: str) -> None:
        """Decode through the trained vocoder in `directory` from now on. Refuses one trained
        for another tokenizer, codebook layout or k-means fit (mmllm.vocoder)."""
        from mmllm.tokenizers.vocoder import load_vocoder_for

        self.vocoder = load_vocoder_for(self, directory)
        self.can_decode = True

    @property
    def bitrate_bps(self) -> float:
        """K x log2(codebook_size) x frame rate."""
        return self.num_codebooks * math.log2(self.codebook_size) * self.frame_rate_hz

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Samples -> number of code frames for each item (ceil(T / hop) by default)."""
        hop = self.sample_rate / self.frame_rate_hz
        return torch.ceil(lengths.double() / hop).long()

    @abstractmethod
    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, T] float32 at `sample_rate`, lengths [B] -> (codes [B, K, F] int64, frame_lengths [B])."""

    def decode(
        self, codes: torch.Tensor, frame_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [B, K, F], frame_lengths [B] -> (wav [B, T] at `sample_rate`, lengths [B]).

        With a vocoder (config key `vocoder`): wav [B, F * hop], lengths = frame_lengths * hop,
        zero beyond each item; codes at or beyond frame_lengths are ignored (PAD_CODE)."""
        if self.vocoder is not None:
            return self.vocoder.synthesize(codes, frame_lengths)
        raise NotImplementedError(
            f"tokenizer {self.name!r} cannot decode; configure a vocoder (tokenizers/train_vocoder.py)"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sample_rate": self.sample_rate,
            "frame_rate_hz": self.frame_rate_hz,
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_size,
            "bitrate_bps": self.bitrate_bps,
            "can_decode": self.can_decode,
            "continuous": self.continuous,
            "deduplicated": bool(self.cfg.deduplicate),
        }


TOKENIZERS: dict[str, Callable[[TokenizerConfig], AudioTokenizer]] = {}


def register_tokenizer(name: str):
    """Class decorator: make a backend buildable by `name` from a TokenizerConfig."""

    def wrap(cls):
        if name in TOKENIZERS:
            raise ValueError(f"tokenizer {name!r} registered twice")
        TOKENIZERS[name] = cls
        cls.name = name
        return cls

    return wrap


def pad_batch(waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[T_i] tensors -> (wav [B, max T] zero right-padded, lengths [B])."""
    lengths = torch.tensor([w.numel() for w in waveforms], dtype=torch.long)
    batch = torch.zeros(len(waveforms), int(lengths.max()) if len(waveforms) else 0)
    for i, w in enumerate(waveforms):
        batch[i, : w.numel()] = w
    return batch, lengths


def mask_padding(codes: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """Set frames at or beyond each item's length to PAD_CODE. codes [B, K, F]."""
    frames = torch.arange(codes.shape[-1], device=codes.device)
    return codes.masked_fill(
        frames[None, None, :] >= frame_lengths[:, None, None].to(codes.device), PAD_CODE
    )


def deduplicate_units(
    codes: torch.Tensor, frame_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse runs of repeated units (GSLM-style deduplication of semantic units).

    codes [B, 1, F], frame_lengths [B] -> (codes [B, 1, F'] PAD_CODE-padded, lengths [B] =
    number of runs per item, F' = the longest). Durations are dropped: the result has no
    time axis any more, so nothing can be cut at word times or decoded by a vocoder."""
    if codes.shape[1] != 1:
        raise ValueError(f"deduplicate_units needs one codebook, got codes {tuple(codes.shape)}")
    runs = [
        torch.unique_consecutive(codes[b, 0, : int(frame_lengths[b])])
        for b in range(codes.shape[0])
    ]
    new_lengths = torch.tensor([len(r) for r in runs], dtype=torch.long, device=codes.device)
    out = torch.full(
        (codes.shape[0], 1, int(new_lengths.max()) if len(runs) else 0),
        PAD_CODE,
        dtype=codes.dtype,
        device=codes.device,
    )
    for b, run in enumerate(runs):
        out[b, 0, : len(run)] = run
    return out, new_lengths
