"""Token statistics of a cache: python tokenizers/stats.py --cache DIR --data DIR [--task asr] [--split test]

Writes stats.json and stats.png (per-codebook perplexity and word purity) into the cache's
task/split folder, or --out.
"""

import sys

from mmllm.cli.tokens import stats as main

if __name__ == "__main__":
    sys.exit(main())
