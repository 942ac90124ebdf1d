"""`mmllm eval`, `mmllm compare` and `mmllm generate`: scoring and prompting checkpoints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mmllm.config import HelpFormatter, comma_list, command_parser, positive_int
from mmllm.corpus.schema import SPLITS, TASKS


def dasb(argv: Sequence[str] | None = None) -> int:
    """Run the DASB tasks as prompts to a checkpoint; DIR/<task>.json(l) and DIR/dasb.json."""
    parser = command_parser(
        "eval",
        "Run the DASB tasks as prompts to a trained checkpoint and score them.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint (final/)")
    parser.add_argument(
        "--tasks", type=comma_list(TASKS), default=list(TASKS), help="comma-separated tasks"
    )
    parser.add_argument("--split", choices=SPLITS, default="test", help="corpus split")
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="rows per task (default: all; 40 for audio tasks)",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: the run's eval/")
    parser.add_argument(
        "--asr",
        "--asr-checkpoint",
        default=None,
        help="ASR of dWER (TTS, SE, SS): mmllm checkpoint dir, or Whisper hub id / dir",
    )
    parser.add_argument(
        "--vocoder", type=Path, default=None, help="decode audio answers with this token vocoder"
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="prompts per batch")
    parser.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bf16 on CUDA, else fp32), fp32, bf16"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=96, help="length cap of text answers"
    )
    args = parser.parse_args(argv)
    tasks = args.tasks
    from mmllm.eval.dasb import evaluate_checkpoint
    from mmllm.eval.generation import GenerationConfig
    from mmllm.eval.prompting import GenerateError

    out = args.out or args.checkpoint.parent / "eval"
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    try:
        report = evaluate_checkpoint(
            args.checkpoint,
            tasks,
            out,
            args.split,
            args.limit,
            config,
            args.asr,
            args.vocoder,
            args.device,
            args.dtype,
        )
    except (GenerateError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}/dasb.json ({len(report['tasks'])} tasks)")
    return 0


def compare(argv: Sequence[str] | None = None) -> int:
    """comparison.md (also printed), comparison.json and plots of evaluated runs."""
    parser = command_parser(
        "compare",
        "DASB-style comparison of runs: a markdown table, JSON and plots.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with eval/dasb.json")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN0/../report")
    args = parser.parse_args(argv)
    from mmllm.eval.compare import compare_runs

    runs = [r for r in args.runs if r.suffix == ".json" or (r / "eval" / "dasb.json").is_file()]
    for run in sorted(set(args.runs) - set(runs)):
        print(f"skipped {run}: no eval/dasb.json", file=sys.stderr)
    if not runs:
        print("error: no run with eval/dasb.json among the arguments", file=sys.stderr)
        return 2
    out = args.out or runs[0].parent / "report"
    try:
        report = compare_runs(runs, out)
    except (ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report["markdown"])
    plots = "tasks.png, score_vs_bitrate.png"
    if any("codebook_weights" in row for row in report["runs"].values()):
        plots += ", codebook_weights.png"
    print(f"wrote {out}/comparison.md, comparison.json, {plots}")
    return 0


def generate(argv: Sequence[str] | None = None) -> int:
    """Prompt a checkpoint with one task; prints the answer (or writes the WAV)."""
    from mmllm.audio.io import AudioError
    from mmllm.eval.prompting import GenerateError, one_line, run_cli

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # one line and exit code 2, like all bad input
            raise GenerateError(message)

    parser = Parser(
        prog="mmllm generate",
        description="Prompt a trained mmllm checkpoint with one task: one input, or many in "
        "one batched call (a line per input).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (final/)")
    parser.add_argument("task", help=f"one of {', '.join(TASKS)}")
    parser.add_argument(
        "inputs",
        nargs="*",
        help="audio files, directories of them or list files (.txt, one path per line; "
        'sv: "enrollment trial" pairs), or tts "text"s',
    )
    parser.add_argument("--text-file", help="tts: a text file, one text to speak per line")
    parser.add_argument("--speaker", help="tts: speaker id")
    parser.add_argument(
        "--out",
        help="tts/se/ss: output WAV (ss writes OUT-1 and OUT-2); a directory for several inputs",
    )
    parser.add_argument(
        "--jsonl", action="store_true", help="one JSON object per input instead of TAB lines"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, help="prompts generated together"
    )
    parser.add_argument("--allowed", nargs="+", help="restrict a text answer to these strings")
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help="answer length cap (default: the task's)",
    )
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--device", default="auto", help="auto (CUDA where present), cpu, cuda")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bf16 on CUDA, else fp32), fp32, bf16"
    )
    try:
        args = parser.parse_args(argv)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # keep the output to the answer
        for line in run_cli(args):
            print(line)
    except (GenerateError, AudioError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0
