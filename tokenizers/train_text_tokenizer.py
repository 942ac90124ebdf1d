"""Train the small SentencePiece text tokenizer on a SynthDASB corpus's transcripts.

    python tokenizers/train_text_tokenizer.py --data data/synthdasb --out runs/tokenizers/text \
        [--vocab-size 1024] [--model-type unigram|bpe] [--seed S] [--tasks asr,tts,...] \
        [--columns text,label,speaker]

Uses every non-empty train-split value of the columns (transcripts, labels, speaker names:
everything a prompted model reads or writes as text) of the tasks. Writes a Hugging Face tokenizer
(`AutoTokenizer.from_pretrained(OUT)` loads it offline; <unk> <s> </s> <pad> = ids 0-3, byte
fallback on), the raw `spm.model` and `text_tokenizer_card.json`. Logic:
`mmllm.text_tokenizer.train_text_tokenizer`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmllm.data.schema import TASKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="SynthDASB directory")
    parser.add_argument("--out", type=Path, required=True, help="output tokenizer directory")
    parser.add_argument("--vocab-size", type=int, default=1024, help="upper bound on pieces")
    parser.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated SynthDASB tasks")
    parser.add_argument(
        "--columns", default="text,label,speaker", help="comma-separated row columns to train on"
    )
    args = parser.parse_args(argv)

    from mmllm.text_tokenizer import synth_texts, train_text_tokenizer

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


if __name__ == "__main__":
    sys.exit(main())
