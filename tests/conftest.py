"""Shared fixtures: one SynthDASB tiny build per test session."""

from pathlib import Path

import pytest

from mmllm.synth.build import SynthConfig, build

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synth_tiny(tmp_path_factory) -> Path:
    """SynthDASB `tiny` (all tasks), built once per session (~5 s)."""
    return build(
        SynthConfig.from_name("tiny"), tmp_path_factory.mktemp("synthdasb") / "tiny", workers=2
    )


@pytest.fixture(scope="session")
def tiny_tokens(synth_tiny, tmp_path_factory) -> dict:
    """mfcc-kmeans (32 units) fitted on SynthDASB tiny and its token cache, once per session.

    Returns {"corpus", "centroids", "cache_dir", "cache", "overrides", "tokenizer"}: what a pretrain config needs
    to reuse them (tokenizers.cache_dir, tokenizers.input_overrides)."""
    from mmllm.config import load_config
    from mmllm.data.cache import extract_corpus, token_cache_dir
    from mmllm.tokenizers.backends.offline_fit import fit_offline_from_config
    from mmllm.tokenizers.base import TokenizerConfig

    root = tmp_path_factory.mktemp("tiny_tokens")
    overrides = ["codebook_size=32", f"centroids={root / 'centroids'}"]
    cfg = load_config(TokenizerConfig, ROOT / "configs/tokenizers/mfcc-kmeans.yaml", overrides)
    fit_offline_from_config(
        cfg, synth_tiny, root / "centroids", max_frames=20000, seed=0, progress=False
    )
    cache = token_cache_dir(root / "tokens", cfg)  # where pretraining looks for it
    extract_corpus(cfg, synth_tiny, cache)
    return {
        "corpus": synth_tiny,
        "centroids": root / "centroids",
        "cache_dir": root / "tokens",
        "cache": cache,
        "overrides": overrides,
        "tokenizer": cfg,
    }
