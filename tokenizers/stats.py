"""Token statistics of a cache: python tokenizers/stats.py --cache DIR --data DIR [--task asr] [--split test]

Writes stats.json and stats.png (per-codebook perplexity and word purity) into the cache's
task/split folder, or --out.
"""

import argparse
import json
import sys
from pathlib import Path

from mmllm.tokenizers.stats import save_report, token_statistics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Per-codebook usage, perplexity and word purity of a token cache."
    )
    parser.add_argument(
        "--cache", type=Path, required=True, help="token cache directory (tokenizers/extract.py)"
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="corpus directory the cache was built from"
    )
    parser.add_argument("--task", default="asr")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=None, help="default: CACHE/TASK/SPLIT")
    args = parser.parse_args(argv)
    report = token_statistics(args.cache, args.data, args.task, args.split)
    json_path, png_path = save_report(report, args.out or args.cache / args.task / args.split)
    print(json.dumps({k: v for k, v in report.items() if k != "codebooks"}, indent=1))
    for k, book in enumerate(report["codebooks"]):
        print(
            f"codebook {k}: usage {book['usage']:.2f}  perplexity {book['perplexity']:.1f}  purity {book['purity']}"
        )
    print(f"-> {json_path}, {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
