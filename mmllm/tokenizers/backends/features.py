"""Continuous audio features for the continuous-input baseline, cached like tokens.

They share the tokenizer interface so that `tokenizers/extract.py` / `extract_corpus` cache
them exactly as codes (resumable, sharded, keyed by config hash): `encode` returns
`[B, D, F]` float features instead of `[B, K, F]` codes, and the cache stores them as
float16 (`continuous = True`, `mmllm.data.cache.storage_dtype`). In the LLM they never become tokens: the trainer projects
them into the embedding space at the audio span (`mmllm.modeling.continuous`).

    mfcc-features     13 MFCC x 2 stacked frames = 26 dims at 50 Hz: exactly the frames
                      mfcc-kmeans clusters, before quantisation (the direct comparison);
                      `options.deltas: true` appends deltas and delta-deltas (78 dims), as
                      the mfcc-kmeans option of the same name
    log-mel-features  80 log-mel bands at 50 Hz
    hubert-features   hidden states of the SSL model's `layers` (`weights`: hub id or local
    wavlm-features    directory, as for the *-kmeans units of mmllm.tokenizers.backends.ssl),
    wav2vec2-features concatenated layer after layer: L x D dims at 50 Hz. The projector
                      learns the softmax-weighted sum over the L layers (DASB's continuous
                      baseline; mmllm.modeling.continuous.AudioProjector), so the cache holds every
                      layer: L x D x 2 bytes x 50 Hz, ~614 KB per second of audio for 6
                      layers of a large model. Pick `layers` with that in mind.

The offline ones are normalised per utterance by default (`options.cmvn: utterance`: mean 0,
variance 1 per dimension over the utterance's frames), the usual CMVN, so loudness and
channel do not shift the inputs -- but a per-utterance mean also removes much of what tells
speakers apart (their average spectral envelope). `options.cmvn: none` keeps the raw frames
(the projector's LayerNorm scales them), as mfcc-kmeans keeps speaker offsets with its
corpus statistics; compare both when speaker identity matters. The SSL layers default to
`cmvn: none`: the projector normalises each layer's frames before weighting them, as
SUPERB's weighted-sum featurizer does.
"""

from __future__ import annotations

from typing import Any

import torch

from mmllm.audio.features import utterance_cmvn
from mmllm.tokenizers.backends.offline import (
    FRAME_RATE_HZ,
    MFCC_STACK,
    SAMPLE_RATE,
    log_mel_frames,
    mfcc_dim,
    mfcc_frames,
    offline_deltas,
)
from mmllm.tokenizers.backends.ssl import SSL_FAMILIES, SSLFeatures
from mmllm.tokenizers.base import AudioTokenizer, TokenizerConfig, register_tokenizer
from mmllm.tokenizers.hf import check_fields, check_options

CMVN_MODES = ("utterance", "none")


class _ContinuousFeatures(AudioTokenizer):
    """Shared by the feature backends: 16 kHz in, `[B, D, F]` out, `options.cmvn`.

    Subclasses set `feature_dim` (D); the cache stores `[D, F]` like `[K, F]` codes, so
    `num_codebooks` is D."""

    continuous = True
    sample_rate = SAMPLE_RATE
    frame_rate_hz = float(FRAME_RATE_HZ)
    codebook_size = 0  # no codes: continuous features
    feature_dim: int
    used_fields: frozenset[str] = frozenset()  # TokenizerConfig fields besides name/options
    allowed_options = {"cmvn"}
    default_cmvn = "utterance"

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        check_fields(cfg, set(self.used_fields))
        check_options(cfg, self.allowed_options)
        self.cmvn = cfg.options.get("cmvn", self.default_cmvn)
        if self.cmvn not in CMVN_MODES:
            raise ValueError(
                f"{self.name}: options.cmvn must be one of {list(CMVN_MODES)}, got {self.cmvn!r}"
            )

    @property
    def num_codebooks(self) -> int:
        return self.feature_dim

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
        self.deltas = offline_deltas(cfg)
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


class _SSLLayerFeatures(_ContinuousFeatures):
    """Hidden states of `layers` of an SSL model (mmllm.tokenizers.backends.ssl.SSLFeatures:
    exact batching, `options.normalize` for the waveform), concatenated along D in the order
    of `layers`: features [B, L * D, F]. `feature_layers` tells the trainer to build the
    layer-weighted projector over the L blocks."""

    used_fields = frozenset({"weights", "layers"})
    allowed_options = {"cmvn", "normalize"}
    default_cmvn = "none"

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)  # checks the fields and options before the model is loaded
        if not cfg.weights:
            family = SSL_FAMILIES[self.name.split("-")[0]][1]
            raise ValueError(
                f"tokenizer {self.name!r}: `weights` is required: a hub id or local directory "
                f"of the SSL model (e.g. {family})"
            )
        self.ssl = SSLFeatures(cfg)
        self.feature_layers = list(cfg.layers)
        self.layer_dim = self.ssl.hidden_size
        self.feature_dim = len(self.feature_layers) * self.layer_dim
        self.frame_rate_hz = SAMPLE_RATE / self.ssl.hop_length

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "feature_layers": self.feature_layers,
            "layer_dim": self.layer_dim,
            "normalize": self.ssl.normalize,
        }

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.ssl.frame_lengths(lengths)

    def _frames(self, wav, lengths):
        layers, frame_lengths = self.ssl(wav, lengths)  # L x [B, F, D]
        return torch.cat(layers, dim=2).cpu(), frame_lengths.cpu()


@register_tokenizer("hubert-features")
class HubertFeatures(_SSLLayerFeatures):
    """transformers.HubertModel hidden states of `layers`."""


@register_tokenizer("wavlm-features")
class WavLMFeatures(_SSLLayerFeatures):
    """transformers.WavLMModel hidden states of `layers`."""


@register_tokenizer("wav2vec2-features")
class Wav2Vec2Features(_SSLLayerFeatures):
    """transformers.Wav2Vec2Model hidden states of `layers`."""
