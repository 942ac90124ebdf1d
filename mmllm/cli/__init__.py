"""The `mmllm` command: one entry point, one subcommand per step of the pipeline.

    mmllm synth     build the SynthDASB corpus               (mmllm.synth)
    mmllm convert   convert a public corpus to the schema    (mmllm.corpora)
    mmllm fit       fit a k-means tokenizer's centroids      (mmllm.tokenizers)
    mmllm extract   encode a corpus into a token cache       (mmllm.data.cache)
    mmllm stats     token statistics of a cache              (mmllm.data.token_stats)
    mmllm text-tokenizer   train the SentencePiece text tokenizer
    mmllm pretrain  the pretraining job                      (mmllm.pretrain)
    mmllm vocoder   train a token vocoder                    (mmllm.vocoder)
    mmllm eval      the DASB tasks as prompts, scored        (mmllm.eval.dasb)
    mmllm compare   comparison table and plots of runs       (mmllm.eval.compare)
    mmllm generate  prompt a checkpoint (ASR, TTS, ...)      (mmllm.eval.prompting)

Every subcommand with a config takes `--config FILE` plus dotted `KEY=VALUE` overrides,
and `mmllm SUBCOMMAND --help` shows its options with their defaults. The scripts under
train/, tokenizers/ and eval/ call the same functions (`accelerate launch
train/pretrain.py` is `mmllm pretrain` under a launcher).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module under mmllm.cli, function, one-line help)
SUBCOMMANDS = {
    "synth": ("corpus", "synth", "build the SynthDASB corpus"),
    "convert": ("corpus", "convert", "convert a public corpus to the mmllm schema"),
    "fit": ("tokens", "fit", "fit a k-means tokenizer's centroids on a corpus"),
    "extract": ("tokens", "extract", "encode a corpus into a token cache"),
    "stats": ("tokens", "stats", "per-codebook usage, perplexity and word purity of a cache"),
    "text-tokenizer": ("tokens", "text_tokenizer", "train the SentencePiece text tokenizer"),
    "pretrain": ("train", "pretrain", "pretrain an LLM on interleaved text and audio"),
    "vocoder": ("train", "vocoder", "train a token vocoder (codes -> waveform)"),
    "eval": ("evaluate", "dasb", "run the DASB tasks as prompts and score them"),
    "compare": ("evaluate", "compare", "comparison table and plots of evaluated runs"),
    "generate": ("evaluate", "generate", "prompt a trained checkpoint with one task"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: mmllm SUBCOMMAND [--help] [ARGS ...]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`mmllm SUBCOMMAND ARGS...` -> the subcommand's exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"mmllm: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = SUBCOMMANDS[name]
    run = getattr(importlib.import_module(f"mmllm.cli.{module}"), function)
    return run(rest)
