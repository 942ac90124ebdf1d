"""DASB-style comparison of runs: a markdown table, JSON and plots.

    python eval/compare.py runs/compare/* [--out runs/compare/report]

Each argument is a run directory with eval/dasb.json (from eval/dasb.py) or such a file.
Writes comparison.md (also printed), comparison.json, tasks.png, score_vs_bitrate.png and,
when a run learned input weights (summed codebooks, SSL layer features), codebook_weights.png.
Logic: mmllm.compare.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from mmllm.compare import compare_runs

    runs = [r for r in args.runs if r.suffix == ".json" or (r / "eval" / "dasb.json").is_file()]
    skipped = sorted(set(args.runs) - set(runs))
    for run in skipped:
        print(f"skipped {run}: no eval/dasb.json", file=sys.stderr)
    if not runs:
        print("error: no run with eval/dasb.json among the arguments", file=sys.stderr)
        return 2
    out = args.out or runs[0].parent / "report"
    report = compare_runs(runs, out)
    print(report["markdown"])
    plots = "tasks.png, score_vs_bitrate.png"
    if any("codebook_weights" in row for row in report["runs"].values()):
        plots += ", codebook_weights.png"
    print(f"wrote {out}/comparison.md, comparison.json, {plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
