"""Build any registered tokenizer from its config. Importing the backends here (not in
`base`) keeps `base` free of its own subclasses: backends import `base`, never the
other way round.
"""

from __future__ import annotations

import dataclasses

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
