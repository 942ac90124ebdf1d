"""Train a token vocoder (codes -> waveform) for a tokenizer without a decoder.

    python tokenizers/train_vocoder.py --config configs/vocoder/mfcc-kmeans.yaml \
        --tokenizer configs/tokenizers/mfcc-kmeans.yaml --data data/synthdasb-small \
        --cache data/tokens/mfcc-kmeans --out runs/vocoders/mfcc-kmeans [steps=3000 ...]

Trains on random aligned segments of (cached codes, audio) of the corpus's train split
(the tasks in the config; with discriminators when it has an `adversarial` section, e.g.
configs/vocoder/mfcc-kmeans-gan.yaml or the override adversarial={}), checkpoints to
OUT/checkpoints every `checkpoint_every` steps and exports OUT/vocoder.safetensors +
OUT/vocoder.json. Killed, it resumes from the last checkpoint when run again with the same
arguments. Also runs under `accelerate launch --num_processes 1` (GPUs). Decode with it by
setting `vocoder: OUT` in the tokenizer config. Logic: mmllm.vocoder (+ mmllm.vocoder_gan).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmllm.config import ConfigError, load_config
from mmllm.tokenizers.base import TokenizerConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="vocoder config YAML")
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer config YAML")
    parser.add_argument("--data", type=Path, required=True, help="SynthDASB-layout corpus")
    parser.add_argument("--cache", type=Path, required=True, help="token cache of that corpus")
    parser.add_argument("--out", type=Path, required=True, help="run / export directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="VocoderConfig overrides, e.g. steps=100"
    )
    args = parser.parse_args(argv)

    from mmllm.vocoder import VocoderConfig, train_vocoder

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
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if records:
        last = records[-1]
        print(
            f"vocoder for {tokenizer_cfg.name}: step {last['step']}, loss {last['loss']:.4f} "
            f"(mel {last['mel']:.4f}); exported to {args.out}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
