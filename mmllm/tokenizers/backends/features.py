"""Continuous audio features for the continuous-input baseline, cached like tokens.

They share the tokenizer interface so that `tokenizers/extract.py` / `extract_corpus` cache
them exactly as codes (resumable, sharded, keyed by config hash): `encode` returns
`[B, D, F]` float features instead of `[B, K, F]` codes, and the cache stores them as
float16 (`continuous = True`, `mmllm.data.cache.storage_dtype`). In the LLM they never become tokens: the trainer projects
them into the embedding space at the audio span (`mmllm.continuous`).

    mfcc-features     13 MFCC x 2 stacked frames = 26 dims at 50 Hz: exactly the frames
                      mfcc-kmeans clusters, before quantisation (the direct comparison);
                      `options.deltas: true` appends deltas and delta-deltas (78 dims), as
                      the mfcc-kmeans option of the same name
    log-mel-features  80 log-mel bands at 50 Hz

Both are normalised per utterance by default (`options.cmvn: utterance`: mean 0, variance 1
per dimension over the utterance's frames), the usual CMVN, so loudness and channel do not
shift the inputs -- but a per-utterance mean also removes much of what tells speakers apart
(their average spectral envelope). `options.cmvn: none` keeps the raw frames (the
projector's LayerNorm scales them), as mfcc-kmeans keeps speaker offsets with its corpus
statistics; compare both when speaker identity matters.
"""

from __future__ import annotations

from typing import Any

import torch

from mmllm.tokenizers.backends.offline import (
    FRAME_RATE_HZ,
    MFCC_STACK,
    SAMPLE_RATE,
    log_mel_frames,
    mfcc_deltas,
    mfcc_dim,
    mfcc_frames,
    utterance_cmvn,
)
from mmllm.tokenizers.base import AudioTokenizer, TokenizerConfig, register_tokenizer
from mmllm.tokenizers.hf import check_options

CMVN_MODES = ("utterance", "none")


class _ContinuousFeatures(AudioTokenizer):
    """Shared by the offline feature backends: 16 kHz in, 50 Hz out, `options.cmvn`."""

    continuous = True
    sample_rate = SAMPLE_RATE
    frame_rate_hz = float(FRAME_RATE_HZ)
    codebook_size = 0  # no codes: continuous features
    feature_dim: int
    allowed_options = {"cmvn"}

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        unused = {
            k: v
            for k, v in {
                "weights": cfg.weights,
                "centroids": cfg.centroids,
                "codebook_size": cfg.codebook_size,
                "bandwidth_kbps": cfg.bandwidth_kbps,
                "layers": cfg.layers or None,
                "vocoder": cfg.vocoder,
            }.items()
            if v is not None
        }
        if unused:
            raise ValueError(
                f"{self.name}: config keys {sorted(unused)} do not apply; leave them unset"
            )
        self.num_codebooks = self.feature_dim  # the cache stores [D, F] like [K, F]
        check_options(cfg, self.allowed_options)
        self.cmvn = cfg.options.get("cmvn", "utterance")
        if self.cmvn not in CMVN_MODES:
            raise ValueError(
                f"{self.name}: options.cmvn must be one of {list(CMVN_MODES)}, got {self.cmvn!r}"
            )

    @property
    def bitrate_bps(self) -> float:
        return self.feature_dim * 16 * self.frame_rate_hz  # as cached: float16 per dimension

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"feature_dim": self.feature_dim, "cmvn": self.cmvn}

    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, T] 16 kHz, lengths [B] -> (features [B, D, F] float32, frame_lengths [B])."""
        lengths = torch.as_tensor(lengths).long().cpu()
        features, frame_lengths = self._frames(wav.float().cpu(), lengths)
        if self.cmvn == "utterance":
            features = utterance_cmvn(features, frame_lengths)
        return features.transpose(1, 2).to(wav.device), frame_lengths


@register_tokenizer("mfcc-features")
class MfccFeatures(_ContinuousFeatures):
    allowed_options = {"cmvn", "deltas"}

    def __init__(self, cfg: TokenizerConfig) -> None:
        self.deltas = mfcc_deltas(cfg)
        self.feature_dim = MFCC_STACK * mfcc_dim(self.deltas)
        super().__init__(cfg)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"deltas": self.deltas}

    def _frames(self, wav, lengths):
        mfcc, frame_lengths = mfcc_frames(wav, lengths, self.deltas)  # [B, 2F, 13 | 39], 100 Hz
        batch, frames, dim = mfcc.shape
        return mfcc.reshape(batch, frames // MFCC_STACK, MFCC_STACK * dim), frame_lengths


@register_tokenizer("log-mel-features")
class LogMelFeatures(_ContinuousFeatures):
    feature_dim = 80

    def _frames(self, wav, lengths):
        return log_mel_frames(wav, lengths)
