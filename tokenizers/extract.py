"""Encode a corpus into a token cache, once: python tokenizers/extract.py --tokenizer CFG --data DIR --out DIR

    python tokenizers/extract.py --tokenizer configs/tokenizers/mfcc-kmeans.yaml \\
        --data data/synthdasb-small --out data/tokens/mfcc-kmeans [--tasks asr,ks] [KEY=VALUE ...]

Sharded under `accelerate launch --num_processes N tokenizers/extract.py ...` on GPUs, or
`torchrun --nproc_per_node N tokenizers/extract.py ...` on CPU; killed at any
moment and run again, it finishes with exactly the cache an uninterrupted run makes.
Rows with bad audio are reported by id, counted and skipped.
"""

import argparse
import sys
from pathlib import Path

from mmllm.config import ConfigError, load_config
from mmllm.data.cache import CacheError, extract_corpus
from mmllm.tokenizers.base import TokenizerConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Encode a corpus into a token cache.")
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer config YAML")
    parser.add_argument("--data", type=Path, required=True, help="corpus directory (task folders)")
    parser.add_argument("--out", type=Path, required=True, help="cache directory")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: all found)")
    parser.add_argument("--splits", default="train,valid,test")
    parser.add_argument("--rows-per-part", type=int, default=256, help="rows per resumable part")
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=None,
        help="padded audio per batch (default: 120 on GPU, 8 on CPU)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="tokenizer config overrides"
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(TokenizerConfig, args.tokenizer, args.overrides)
        extract_corpus(
            cfg,
            args.data,
            args.out,
            args.tasks.split(",") if args.tasks else None,
            tuple(args.splits.split(",")),
            args.rows_per_part,
            args.batch_seconds,
        )
    except (ConfigError, CacheError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
