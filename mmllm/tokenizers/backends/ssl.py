"""Discrete SSL units: k-means over hidden layers of HuBERT, WavLM or wav2vec 2.0 (DASB style).

    hubert-kmeans    transformers.HubertModel   (e.g. facebook/hubert-large-ll60k)
    wavlm-kmeans     transformers.WavLMModel    (e.g. microsoft/wavlm-large)
    wav2vec2-kmeans  transformers.Wav2Vec2Model (e.g. facebook/wav2vec2-large-960h-lv60-self)

16 kHz in, 50 Hz out (the conv feature encoder's hop of 320 samples). Each entry of
`layers` is a `hidden_states` index (0 = the transformer's input, i = output of layer i)
and gives one codebook: the nearest of its k centroids (`codebook_size`, default 1000),
read from `centroids` (a directory written by `fit_ssl_kmeans`, tensors `layer_<i>`).
Layers above the highest one asked for are dropped from the model after loading.
`deduplicate` collapses runs of repeated units; allowed with one layer only, since
codebooks collapsed separately would no longer share a time axis. Decoding runs the
trained vocoder named by config key `vocoder` (mmllm.vocoder; not with `deduplicate`);
without one it raises the base class error that points at tokenizers/train_vocoder.py.

Waveforms are normalised per item over its own samples (zero mean, unit variance, as the
model's feature extractor does) when its preprocessor_config.json says `do_normalize`;
`options.normalize: true|false` overrides that (directories from save_pretrained hold no
preprocessor config, so there it defaults to false).

Exact batching. frame_lengths follow the conv formula (per conv layer
F = floor((F - kernel) / stride) + 1; 0 below 400 samples), and a frame of the conv
feature encoder reads only samples inside its item, so padding can reach an item's
frames in two places only:
- the transformer (attention, positional conv): models take `attention_mask`, which
  zeroes the padded frames before the positional conv (alone, that conv pads with zeros
  too) and keeps attention off them; used whenever the model can mask;
- a feature encoder with `feat_extract_norm="group"` (the base-size checkpoints): its
  first layer GroupNorm normalises each channel over the whole padded time axis, which no
  mask reaches. Such models encode each group of equal-length items as one batch
  (padding-free), so mixed lengths cost one forward per distinct length.
`SSLFeatures.batching` says which path a model takes. Items shorter than the receptive
field (400 samples) have no frames and are left out of the forward pass.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from mmllm.runtime import resolve_device
from mmllm.tokenizers.base import (
    PAD_CODE,
    AudioTokenizer,
    TokenizerConfig,
    deduplicate_units,
    pad_batch,
    register_tokenizer,
)
from mmllm.tokenizers.hf import (
    as_normal_tensor,
    check_batch,
    check_fields,
    check_options,
    equal_length_groups,
    load_pretrained,
    read_json_file,
    sample_mask,
)

SAMPLE_RATE = 16000
DEFAULT_CODEBOOK_SIZE = 1000
# model family -> (transformers class, a hub id for messages)
SSL_FAMILIES = {
    "hubert": ("HubertModel", "facebook/hubert-large-ll60k"),
    "wavlm": ("WavLMModel", "microsoft/wavlm-large"),
    "wav2vec2": ("Wav2Vec2Model", "facebook/wav2vec2-large-960h-lv60-self"),
}
# registry name -> family: k-means units here, continuous layer features in
# mmllm.tokenizers.backends.features (the continuous baseline)
SSL_MODELS = {
    f"{family}-{kind}": family for family in SSL_FAMILIES for kind in ("kmeans", "features")
}
# TokenizerConfig fields the SSL k-means units use (fitting and encoding alike)
KMEANS_FIELDS = {
    "weights",
    "layers",
    "codebook_size",
    "deduplicate",
    "centroids",
    "vocoder",
    "num_codebooks",
}
NORMALIZE_EPS = 1e-7  # as transformers' Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm


def layer_key(layer: int) -> str:
    """Name of a layer's centroid tensor in the centroid directory."""
    return f"layer_{layer}"


def _check_layers(cfg: TokenizerConfig) -> list[int]:
    layers = list(cfg.layers)
    if not layers:
        raise ValueError(
            f"tokenizer {cfg.name!r}: `layers` is required: hidden_states indices to cluster, "
            f"one codebook each (DASB: [1, 3, 7, 12, 18, 23] of the large models)"
        )
    if len(set(layers)) != len(layers):
        raise ValueError(f"tokenizer {cfg.name!r}: `layers` repeats a layer: {layers}")
    return layers


class SSLFeatures:
    """Hidden states of chosen layers of an SSL model, batched without padding effects.

    features(wav [B, T] at 16 kHz, lengths [B]) -> ([L] x [B, F, D], frame_lengths [B]);
    frames at or beyond an item's length are zero.
    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        if cfg.name not in SSL_MODELS:
            raise ValueError(f"not an SSL tokenizer: {cfg.name!r} (known: {sorted(SSL_MODELS)})")
        import transformers

        class_name, example = SSL_FAMILIES[SSL_MODELS[cfg.name]]
        self.layers = _check_layers(cfg)
        self.device = torch.device(resolve_device(cfg.device))
        self.model = load_pretrained(getattr(transformers, class_name), cfg, example)
        config = self.model.config
        if getattr(config, "add_adapter", False):
            raise ValueError(
                f"tokenizer {cfg.name!r}: models with an adapter (add_adapter) change the frame rate; not supported"
            )
        available = config.num_hidden_layers
        bad = [layer for layer in self.layers if not 0 <= layer <= available]
        if bad:
            raise ValueError(
                f"tokenizer {cfg.name!r}: layers {bad} out of range: {cfg.weights!r} has "
                f"hidden_states 0..{available}"
            )
        # Compute only what is used (one layer at least: hidden_states[0] comes with layer 1).
        self.model.encoder.layers = self.model.encoder.layers[: max(1, *self.layers)]
        self.model_type = config.model_type
        self.hidden_size = int(config.hidden_size)
        self.convs = list(zip(config.conv_kernel, config.conv_stride, strict=True))
        self.hop_length = math.prod(config.conv_stride)
        self.can_mask = config.feat_extract_norm == "layer"
        self.batching = "attention_mask" if self.can_mask else "equal-length groups"
        normalize = cfg.options.get("normalize")
        if normalize is None:
            preprocessor = read_json_file(cfg, "preprocessor_config.json") or {}
            normalize = bool(preprocessor.get("do_normalize", False))
        self.normalize = bool(normalize)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Samples -> frames of the conv feature encoder (0 below its receptive field)."""
        frames = torch.as_tensor(lengths).long()
        for kernel, stride in self.convs:
            frames = torch.clamp(
                torch.div(frames - kernel, stride, rounding_mode="floor") + 1, min=0
            )
        return frames

    def _prepare(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Zero beyond each length; per-item zero-mean unit-variance over its own samples."""
        mask = sample_mask(lengths, wav.shape[1])
        wav = wav * mask
        if self.normalize:
            count = lengths.clamp(min=1)[:, None].to(wav.dtype)
            mean = wav.sum(dim=1, keepdim=True) / count
            var = ((wav - mean) * mask).square().sum(dim=1, keepdim=True) / count
            wav = (wav - mean) / torch.sqrt(var + NORMALIZE_EPS) * mask
        return wav

    def _forward(self, wav: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        with warnings.catch_warnings():  # WavLM mixes a bool padding mask with a float bias
            warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
            out = self.model(wav, attention_mask=mask, output_hidden_states=True)
        return [out.hidden_states[layer] for layer in self.layers]

    def __call__(
        self, wav: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        lengths = check_batch(wav, lengths).to(self.device)
        wav = self._prepare(wav.to(self.device, torch.float32), lengths)
        frame_lengths = self.frame_lengths(lengths)
        frames = int(frame_lengths.max()) if len(frame_lengths) else 0
        features = [
            torch.zeros(wav.shape[0], frames, self.hidden_size, device=self.device)
            for _ in self.layers
        ]
        items = torch.nonzero(frame_lengths > 0).flatten()
        with torch.inference_mode():
            if self.can_mask and len(items):
                width = int(lengths[items].max())
                mask = sample_mask(lengths[items], width).long()
                for feature, hidden in zip(
                    features, self._forward(wav[items, :width], mask), strict=True
                ):
                    feature[items, : hidden.shape[1]] = hidden
            elif len(items):
                for group in equal_length_groups(lengths[items]):
                    members = items[group.to(self.device)]
                    width = int(lengths[members[0]])
                    for feature, hidden in zip(
                        features, self._forward(wav[members, :width], None), strict=True
                    ):
                        feature[members, : hidden.shape[1]] = hidden
        valid = sample_mask(frame_lengths, frames)[..., None]
        return [as_normal_tensor(f) * valid for f in features], frame_lengths


class SSLKMeansTokenizer(AudioTokenizer):
    """One codebook per SSL layer: nearest k-means centroid of that layer's hidden state."""

    sample_rate = SAMPLE_RATE

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        from mmllm.tokenizers.kmeans import load_centroids

        check_fields(cfg, KMEANS_FIELDS)
        check_options(cfg, {"normalize"})
        layers = _check_layers(cfg)
        self.num_codebooks = len(layers)
        self.codebook_size = (
            cfg.codebook_size if cfg.codebook_size is not None else DEFAULT_CODEBOOK_SIZE
        )
        if cfg.num_codebooks is not None and cfg.num_codebooks != len(layers):
            raise ValueError(
                f"tokenizer {cfg.name!r}: num_codebooks {cfg.num_codebooks} != {len(layers)} layers "
                f"(one codebook per layer; set only `layers`)"
            )
        if cfg.deduplicate and len(layers) != 1:
            raise ValueError(
                f"tokenizer {cfg.name!r}: `deduplicate` needs exactly one layer, got {layers}: "
                f"collapsing runs in each codebook separately would give codebooks of "
                f"different lengths"
            )
        if not cfg.centroids:
            raise ValueError(
                f"tokenizer {cfg.name!r}: `centroids` is required: a directory written by "
                f"fit_ssl_kmeans (mmllm.tokenizers.backends.ssl)"
            )
        tensors, self.card = load_centroids(cfg.centroids)
        missing = [layer_key(layer) for layer in layers if layer_key(layer) not in tensors]
        if missing:
            raise ValueError(
                f"tokenizer {cfg.name!r}: {cfg.centroids} has no centroids for {missing} "
                f"(it has {sorted(tensors)})"
            )
        self.features = SSLFeatures(cfg)
        self._check_card(cfg, tensors)
        self.frame_rate_hz = SAMPLE_RATE / self.features.hop_length
        self.centroids = [
            tensors[layer_key(layer)].to(self.features.device, torch.float32) for layer in layers
        ]

    def _check_card(self, cfg: TokenizerConfig, tensors: dict[str, torch.Tensor]) -> None:
        where = f"tokenizer {cfg.name!r}: centroids {cfg.centroids}"
        for layer in cfg.layers:
            shape = tuple(tensors[layer_key(layer)].shape)
            if shape != (self.codebook_size, self.features.hidden_size):
                raise ValueError(
                    f"{where}: {layer_key(layer)} is {list(shape)}, expected "
                    f"[codebook_size={self.codebook_size}, hidden_size={self.features.hidden_size}]"
                )
        fitted_type = self.card.get("model_type")
        if fitted_type is not None and fitted_type != self.features.model_type:
            raise ValueError(
                f"{where} were fitted on {fitted_type!r} features, not {self.features.model_type!r}"
            )
        fitted_norm = self.card.get("normalize")
        if fitted_norm is not None and bool(fitted_norm) != self.features.normalize:
            raise ValueError(
                f"{where} were fitted with normalize={fitted_norm}, but this config gives "
                f"normalize={self.features.normalize} (set options.normalize)"
            )

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Samples -> frames (before `deduplicate`, which only shortens)."""
        return self.features.frame_lengths(lengths)

    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, T] at 16 kHz, lengths [B] -> (codes [B, K=len(layers), F] int64, frame_lengths [B])."""
        from mmllm.tokenizers.kmeans import assign

        features, frame_lengths = self.features(wav, lengths)
        frames = features[0].shape[1]
        codes = torch.full(
            (wav.shape[0], self.num_codebooks, frames),
            PAD_CODE,
            dtype=torch.long,
            device=self.features.device,
        )
        valid = sample_mask(frame_lengths, frames)
        for k, (feature, centroids) in enumerate(zip(features, self.centroids, strict=True)):
            if frames:
                codes[:, k][valid] = assign(feature[valid], centroids)
        if self.cfg.deduplicate:
            codes, frame_lengths = deduplicate_units(codes, frame_lengths)
        return codes.to(wav.device), frame_lengths.to(wav.device)


@register_tokenizer("hubert-kmeans")
class HubertKMeansTokenizer(SSLKMeansTokenizer):
    """k-means units over transformers.HubertModel hidden layers."""


@register_tokenizer("wavlm-kmeans")
class WavLMKMeansTokenizer(SSLKMeansTokenizer):
    """k-means units over transformers.WavLMModel hidden layers."""


@register_tokenizer("wav2vec2-kmeans")
class Wav2Vec2KMeansTokenizer(SSLKMeansTokenizer):
    """k-means units over transformers.Wav2Vec2Model hidden layers."""


# ----------------------------------------------------------------------------- fitting


# rows are read until this many times max_frames frames went by: the reservoir then samples
# frames from twice as many as it keeps, so no row's frames make up the whole sample
ROWS_OVERSAMPLE = 2


def fit_ssl_kmeans(
    cfg: TokenizerConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    max_frames: int,
    seed: int,
    *,
    tasks: Sequence[str] = ("asr",),
    split: str = "train",
    batch_size: int = 8,
    max_steps: int = 200,
    progress: bool = True,
) -> Path:
    """Fit one k-means per layer on SSL features of SynthDASB rows; write `out_dir` -> out_dir.

    Reads `split` rows of `tasks` under `data_dir` in a seeded random order and stops once
    it has seen `ROWS_OVERSAMPLE` x `max_frames` frames (the SSL model is the cost: a 960 h
    corpus would otherwise go through it whole to fill a 500k-frame sample), extracts
    the layers of `cfg` `batch_size` waveforms at a time, reservoir-samples at most
    `max_frames` frames (the same frames for every layer: the sample holds all layers side
    by side, max_frames x len(layers) x hidden_size floats), fits k = cfg.codebook_size
    (default 1000) centroids per layer on cfg.device and saves them with a card. Point a
    tokenizer's `centroids` at `out_dir` to encode with them.
    """
    from mmllm.tokenizers.kmeans import fit_kmeans, sample_frames, save_centroids

    check_fields(cfg, KMEANS_FIELDS)
    check_options(cfg, {"normalize"})
    features = SSLFeatures(cfg)
    k = cfg.codebook_size if cfg.codebook_size is not None else DEFAULT_CODEBOOK_SIZE
    counts = {"rows": 0, "frames": 0}

    def item_frames(batch: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        layer_features, frame_lengths = features(*pad_batch(batch))
        for i, frames in enumerate(frame_lengths.tolist()):
            counts["frames"] += frames
            if frames:
                yield torch.cat([f[i, :frames] for f in layer_features], dim=1)  # [n_i, L * D]

    def frame_batches() -> Iterator[torch.Tensor]:
        from mmllm.corpus.reader import corpus_waveforms  # datasets only when fitting

        batch: list[torch.Tensor] = []
        waves = corpus_waveforms(data_dir, tasks, [split], SAMPLE_RATE, shuffle_seed=seed)
        for wave in waves:
            if counts["frames"] >= ROWS_OVERSAMPLE * max_frames:
                return  # enough rows (batch is empty here: frames grow when it is encoded)
            counts["rows"] += 1
            batch.append(wave)
            if len(batch) == batch_size:
                yield from item_frames(batch)
                batch = []
        if batch:
            yield from item_frames(batch)

    sample = sample_frames(frame_batches(), max_frames=max_frames, seed=seed)
    if sample.shape[0] < k:
        raise ValueError(
            f"fit_ssl_kmeans: {sample.shape[0]} frames from {counts['rows']} rows of {list(tasks)} "
            f"({split}) in {data_dir}, fewer than k={k} clusters"
        )
    width = features.hidden_size
    centroids: dict[str, torch.Tensor] = {}
    inertia: dict[str, float] = {}
    steps: dict[str, int] = {}
    for j, layer in enumerate(features.layers):
        frames = sample[:, j * width : (j + 1) * width].to(features.device)
        result = fit_kmeans(frames, k, seed=seed, max_steps=max_steps, progress=progress)
        centroids[layer_key(layer)] = result.centroids.float().cpu()
        inertia[layer_key(layer)] = float(result.inertia)
        steps[layer_key(layer)] = int(result.steps)
    card: dict[str, Any] = {
        "tokenizer": cfg.name,
        "weights": cfg.weights,
        "model_type": features.model_type,
        "layers": features.layers,
        "codebook_size": k,
        "hidden_size": width,
        "normalize": features.normalize,
        "sample_rate": SAMPLE_RATE,
        "batching": features.batching,
        "data": {
            "dir": str(data_dir),
            "tasks": list(tasks),
            "split": split,
            "rows": counts["rows"],
        },
        "frames_seen": counts["frames"],
        "frames_sampled": int(sample.shape[0]),
        "max_frames": max_frames,
        "seed": seed,
        "inertia": inertia,
        "steps": steps,
    }
    save_centroids(out_dir, centroids, card)
    return Path(out_dir)
