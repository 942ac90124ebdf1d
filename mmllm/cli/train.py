"""`mmllm pretrain` and `mmllm vocoder`: the two trainers."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mmllm.config import ConfigError, add_config_arguments, command_parser, load_config
from mmllm.tokenizers.base import TokenizerConfig


def pretrain(argv: Sequence[str] | None = None) -> int:
    """The pretraining job (`accelerate launch train/pretrain.py` runs the same function)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed
    from mmllm.pretrain.loop import main

    return main(argv)


def vocoder(argv: Sequence[str] | None = None) -> int:
    """Train a token vocoder on a token cache and export it to --out."""
    from mmllm.tokenizers.vocoder import VocoderConfig

    parser = command_parser(
        "vocoder",
        "Train a token vocoder (codes -> waveform) for a tokenizer without a decoder.",
    )
    add_config_arguments(parser, VocoderConfig, help="vocoder config YAML")
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer config YAML")
    parser.add_argument("--data", type=Path, required=True, help="corpus the cache was built from")
    parser.add_argument("--cache", type=Path, required=True, help="token cache of that corpus")
    parser.add_argument("--out", type=Path, required=True, help="run / export directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from mmllm.vocoder.train import train_vocoder

    try:
        cfg = load_config(VocoderConfig, args.config, args.overrides)
        tokenizer_cfg = load_config(TokenizerConfig, args.tokenizer)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        records = train_vocoder(
            cfg, tokenizer_cfg, args.data, args.cache, args.out, progress=not args.no_progress
        )
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:  # LockedError too
        print(f"error: {err}", file=sys.stderr)
        return 2
    if records:
        last = records[-1]
        print(
            f"vocoder for {tokenizer_cfg.name}: step {last['step']}, loss {last['loss']:.4f} "
            f"(mel {last['mel']:.4f}); exported to {args.out}"
        )
    return 0
