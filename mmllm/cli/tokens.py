"""`mmllm fit`, `extract`, `stats` and `text-tokenizer`: from audio and text to tokens."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mmllm.config import (
    ConfigError,
    add_config_arguments,
    comma_list,
    command_parser,
    load_config,
    positive_int,
    save_config,
)
from mmllm.corpus.schema import SPLITS, TASKS
from mmllm.fileio import LockedError
from mmllm.tokenizers.base import TokenizerConfig

TOKENIZER_CONFIG_HELP = "tokenizer config YAML (configs/tokenizers/*.yaml)"


def fit(argv: Sequence[str] | None = None) -> int:
    """Fit the centroids of a k-means tokenizer (mfcc-kmeans, mel-rvq, SSL k-means).

    Writes OUT/centroids.safetensors, OUT/card.json and OUT/config.yaml: the resolved
    tokenizer config, with `centroids: OUT`, loadable as is."""
    parser = command_parser(
        "fit",
        "Fit the k-means centroids of a k-means tokenizer on a corpus.",
    )
    add_config_arguments(
        parser, TokenizerConfig, aliases=("--tokenizer",), required=True, help=TOKENIZER_CONFIG_HELP
    )
    parser.add_argument("--data", type=Path, required=True, help="corpus directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: config's centroids)"
    )
    parser.add_argument(
        "--max-frames", type=int, default=500_000, help="frames sampled for k-means"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--splits", default="train", help="comma-separated splits")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(TokenizerConfig, args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or (Path(cfg.centroids) if cfg.centroids else None)
    if out is None:
        print("error: give --out DIR (the config has no 'centroids' directory)", file=sys.stderr)
        return 2
    splits = [s for s in args.splits.split(",") if s]
    tasks = [t for t in args.tasks.split(",") if t]
    from mmllm.tokenizers.registry import fit_centroids

    try:
        resolved = fit_centroids(
            cfg, args.data, out, args.max_frames, args.seed, splits=splits, tasks=tasks
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_config(resolved, out)
    print(f"{cfg.name}: centroids, card.json and config.yaml written to {out}")
    return 0


def extract(argv: Sequence[str] | None = None) -> int:
    """Encode every row's audio into the token cache, once (resumable, sharded)."""
    from mmllm.data.cache import CacheError, extract_corpus

    parser = command_parser("extract", "Encode a corpus into a token cache.")
    add_config_arguments(
        parser, TokenizerConfig, aliases=("--tokenizer",), required=True, help=TOKENIZER_CONFIG_HELP
    )
    parser.add_argument("--data", type=Path, required=True, help="corpus directory (task folders)")
    parser.add_argument("--out", type=Path, required=True, help="cache directory")
    parser.add_argument(
        "--tasks",
        type=comma_list(TASKS),
        default=None,
        help="comma-separated tasks (default: all found)",
    )
    parser.add_argument(
        "--splits", type=comma_list(SPLITS), default=list(SPLITS), help="comma-separated splits"
    )
    parser.add_argument(
        "--rows-per-part", type=positive_int, default=256, help="rows per resumable part"
    )
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=None,
        help="padded audio per batch (default: 120 on GPU, 8 on CPU)",
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: --data {args.data}: not a corpus directory", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out}: is a file, not a cache directory", file=sys.stderr)
        return 2
    try:
        cfg = load_config(TokenizerConfig, args.config, args.overrides)
        extract_corpus(
            cfg,
            args.data,
            args.out,
            args.tasks,
            tuple(args.splits),
            args.rows_per_part,
            args.batch_seconds,
        )
    except (ConfigError, CacheError, FileNotFoundError, LockedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def stats(argv: Sequence[str] | None = None) -> int:
    """stats.json and stats.png of a cache's task/split (or --out)."""
    from mmllm.data.token_stats import save_report, token_statistics

    parser = command_parser(
        "stats",
        "Per-codebook usage, perplexity and word purity of a token cache.",
    )
    parser.add_argument("--cache", type=Path, required=True, help="token cache (mmllm extract)")
    parser.add_argument(
        "--data", type=Path, required=True, help="corpus directory the cache was built from"
    )
    parser.add_argument("--task", default="asr", help="task folder")
    parser.add_argument("--split", default="test", help="corpus split")
    parser.add_argument("--out", type=Path, default=None, help="default: CACHE/TASK/SPLIT")
    args = parser.parse_args(argv)
    report = token_statistics(args.cache, args.data, args.task, args.split)
    json_path, png_path = save_report(report, args.out or args.cache / args.task / args.split)
    print(json.dumps({k: v for k, v in report.items() if k != "codebooks"}, indent=1))
    for k, book in enumerate(report["codebooks"]):
        print(
            f"codebook {k}: usage {book['usage']:.2f}  perplexity {book['perplexity']:.1f}  "
            f"purity {book['purity']}"
        )
    print(f"-> {json_path}, {png_path}")
    return 0


def text_tokenizer(argv: Sequence[str] | None = None) -> int:
    """Train the SentencePiece text tokenizer on a corpus's train-split texts."""
    parser = command_parser(
        "text-tokenizer",
        "Train the small SentencePiece text tokenizer on a corpus's transcripts.",
    )
    parser.add_argument("--data", type=Path, required=True, help="corpus directory")
    parser.add_argument("--out", type=Path, required=True, help="output tokenizer directory")
    parser.add_argument("--vocab-size", type=int, default=1024, help="upper bound on pieces")
    parser.add_argument(
        "--model-type", choices=("unigram", "bpe"), default="unigram", help="SentencePiece model"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    parser.add_argument(
        "--columns", default="text,label,speaker", help="comma-separated row columns to train on"
    )
    args = parser.parse_args(argv)
    from mmllm.data.text_tokenizer import synth_texts, train_text_tokenizer

    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        print(f"error: unknown task(s) {unknown}; expected some of {list(TASKS)}", file=sys.stderr)
        return 2
    try:
        texts = synth_texts(args.data, tasks, columns=args.columns.split(","))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tokenizer = train_text_tokenizer(
        texts, args.out, vocab_size=args.vocab_size, seed=args.seed, model_type=args.model_type
    )
    print(f"text tokenizer: {len(tokenizer)} tokens from {len(texts)} texts, written to {args.out}")
    return 0
