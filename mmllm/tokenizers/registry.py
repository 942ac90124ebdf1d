"""Build any registered tokenizer from its config. Importing the backends here (not in
`base`) keeps `base` free of its own subclasses: backends import `base`, never the
other way round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from mmllm.runtime import resolve_device
from mmllm.tokenizers.base import TOKENIZERS, AudioTokenizer, TokenizerConfig


def build_tokenizer(cfg: TokenizerConfig) -> AudioTokenizer:
    """Build any registered tokenizer from its config (imports every backend module once)."""
    import mmllm.tokenizers.backends  # noqa: F401  (registers the backends)

    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device))
    if cfg.name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {cfg.name!r}; known: {sorted(TOKENIZERS)}")
    tokenizer = TOKENIZERS[cfg.name](cfg)
    if cfg.vocoder:  # after construction: the check needs the tokenizer's codebook layout
        tokenizer.attach_vocoder(cfg.vocoder)
    return tokenizer


def has_centroids_to_fit(cfg: TokenizerConfig) -> bool:
    """An offline (mfcc-kmeans, mel-rvq) or SSL k-means tokenizer: centroids fitted here."""
    from mmllm.tokenizers.backends.offline import OFFLINE_TOKENIZERS

    return cfg.name in OFFLINE_TOKENIZERS or cfg.name.endswith("-kmeans")


def fit_centroids(
    cfg: TokenizerConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    max_frames: int,
    seed: int,
    *,
    splits: Sequence[str] = ("train",),
    tasks: Sequence[str] | None = None,
    progress: bool = True,
) -> TokenizerConfig:
    """Fit the k-means centroids of `cfg` on a corpus into out_dir -> the config resolved to
    use them. SSL k-means fits on one split (of `tasks`, default ASR rows)."""
    from mmllm.tokenizers.backends.offline import OFFLINE_TOKENIZERS

    if cfg.name in OFFLINE_TOKENIZERS:
        from mmllm.tokenizers.backends.offline_fit import fit_offline_from_config

        _, resolved = fit_offline_from_config(
            cfg, data_dir, out_dir, max_frames, seed, splits=splits, tasks=tasks, progress=progress
        )
        return resolved
    if not has_centroids_to_fit(cfg):
        raise ValueError(f"tokenizer {cfg.name!r} has no k-means centroids to fit")
    if len(splits) != 1:
        raise ValueError(f"{cfg.name}: SSL k-means fits on one split, got {list(splits)}")
    from mmllm.tokenizers.backends.ssl import fit_ssl_kmeans

    extra = {"tasks": tasks} if tasks else {}
    fit_ssl_kmeans(
        cfg, data_dir, out_dir, max_frames, seed, split=splits[0], progress=progress, **extra
    )
    return dataclasses.replace(cfg, centroids=str(out_dir))
