"""DASB-style comparison of runs: a markdown table, JSON and plots.

    python eval/compare.py runs/compare/* [--out runs/compare/report]

Each argument is a run directory with eval/dasb.json (from eval/dasb.py) or such a file.
Writes comparison.md (also printed), comparison.json, tasks.png, score_vs_bitrate.png and,
when a run learned input weights (summed codebooks, SSL layer features), codebook_weights.png.
Same as `mmllm compare` (mmllm.cli.evaluate).
"""

import sys

from mmllm.cli.evaluate import compare as main

if __name__ == "__main__":
    sys.exit(main())
