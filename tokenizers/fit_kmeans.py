"""Fit the k-means centroids of a k-means tokenizer on a SynthDASB corpus.

    python tokenizers/fit_kmeans.py --tokenizer configs/tokenizers/mfcc-kmeans.yaml \
        --data data/synthdasb --out runs/tokenizers/mfcc-kmeans [--max-frames N] [--seed S] \
        [codebook_size=100 ...]

Writes OUT/centroids.safetensors, OUT/card.json and OUT/config.yaml: the resolved tokenizer
config, with `centroids: OUT`, loadable as is. `--out` defaults to the config's `centroids`.
mfcc-kmeans and mel-rvq are fitted by mmllm.tokenizers.backends.offline; the SSL k-means
tokenizers (hubert-, wavlm-, wav2vec2-kmeans) by mmllm.tokenizers.backends.ssl.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mmllm.config import ConfigError, load_config, save_config
from mmllm.data.schema import TASKS
from mmllm.tokenizers.base import TokenizerConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer config YAML")
    parser.add_argument("--data", type=Path, required=True, help="SynthDASB directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: config's centroids)"
    )
    parser.add_argument(
        "--max-frames", type=int, default=500_000, help="frames sampled for k-means"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", default="train", help="comma-separated splits (default: train)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated SynthDASB tasks")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(TokenizerConfig, args.tokenizer, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or (Path(cfg.centroids) if cfg.centroids else None)
    if out is None:
        print("error: give --out DIR (the config has no 'centroids' directory)", file=sys.stderr)
        return 2
    splits = [s for s in args.splits.split(",") if s]
    tasks = [t for t in args.tasks.split(",") if t]

    from mmllm.tokenizers.backends.offline import OFFLINE_TOKENIZERS, fit_offline_from_config

    if cfg.name in OFFLINE_TOKENIZERS:
        out, resolved = fit_offline_from_config(
            cfg, args.data, out, args.max_frames, args.seed, splits=splits, tasks=tasks
        )
    elif cfg.name.endswith("-kmeans"):
        from mmllm.tokenizers.backends.ssl import fit_ssl_kmeans

        if len(splits) != 1:
            print(
                f"error: {cfg.name}: SSL k-means fits on one split, got --splits {args.splits}",
                file=sys.stderr,
            )
            return 2
        fit_ssl_kmeans(
            cfg, args.data, out, args.max_frames, args.seed, tasks=tasks, split=splits[0]
        )
        resolved = dataclasses.replace(cfg, centroids=str(out))
    else:
        print(f"error: tokenizer {cfg.name!r} has no k-means centroids to fit", file=sys.stderr)
        return 2
    save_config(resolved, out)
    print(f"{cfg.name}: centroids, card.json and config.yaml written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
