"""Run the DASB tasks as prompts to a trained checkpoint and score them.

    python eval/dasb.py --checkpoint runs/pretrain/default/final \
        [--tasks asr,ks,ic,er,sid,sv,se,ss,tts] [--split test] [--limit N] [--out DIR] \
        [--asr ASR] [--vocoder DIR] [--batch-size 32] [--max-new-tokens 96]

Uses the checkpoint's own corpus and token caches (from its mmllm_pretrain.yaml). Writes
DIR/<task>.json, DIR/<task>.jsonl (every generation) and DIR/dasb.json; DIR defaults to the
run directory's `eval/`. dWER of TTS / SE / SS needs --asr: an mmllm checkpoint directory
trained on ASR, or a Whisper hub id / directory (mmllm.asr_scorer); the report names it.
Logic: mmllm.dasb.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmllm.data.schema import TASKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--limit", type=int, default=None, help="rows per task (default: all; 40 for audio tasks)"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--asr",
        "--asr-checkpoint",
        default=None,
        help="ASR of dWER (TTS, SE, SS): mmllm checkpoint dir, or Whisper hub id / dir",
    )
    parser.add_argument(
        "--vocoder", type=Path, default=None, help="decode audio answers with this token vocoder"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=96, help="for text answers")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        print(f"error: unknown task(s) {unknown}; known: {list(TASKS)}", file=sys.stderr)
        return 2
    from mmllm.dasb import evaluate_checkpoint
    from mmllm.generate import GenerationConfig
    from mmllm.prompting import GenerateError

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
        )
    except (GenerateError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}/dasb.json ({len(report['tasks'])} tasks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
