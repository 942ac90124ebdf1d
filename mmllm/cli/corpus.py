"""`mmllm synth` and `mmllm convert`: corpora in the one schema."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from mmllm.config import (
    ConfigError,
    add_config_arguments,
    command_parser,
    load_config,
    save_config,
)
from mmllm.fileio import LockedError, exclusive_lock


def synth(argv: Sequence[str] | None = None) -> int:
    """Build SynthDASB (`--size tiny|small|full` presets, or a config) into --out."""
    from mmllm.synth.build import SIZES, SynthConfig, build

    parser = command_parser(
        "synth",
        "Build the offline SynthDASB corpus (every DASB task, rendered with eSpeak NG).",
    )
    parser.add_argument("--size", choices=list(SIZES), default=None, help="preset (default: small)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument(
        "--preview", type=int, default=0, metavar="N", help="write N WAVs per task to OUT/preview"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace OUT even if it holds another build or other files",
    )
    add_config_arguments(parser, SynthConfig)
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"size={args.size}"] if args.size else [])
    try:
        cfg = load_config(SynthConfig, args.config, overrides)
        build(cfg, args.out, workers=args.workers, preview=args.preview, force=args.force)
    except (ConfigError, LockedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def convert(argv: Sequence[str] | None = None) -> int:
    """Convert a public corpus (configs/corpora/*.yaml) and save it to --out."""
    from mmllm.corpora.convert import CorpusConfig, load_corpus
    from mmllm.fileio import atomic_directory

    parser = command_parser(
        "convert",
        "Convert a public corpus to the mmllm schema (datasets save_to_disk).",
    )
    add_config_arguments(parser, CorpusConfig)
    parser.add_argument("--out", type=Path, required=True, help="directory for save_to_disk")
    parser.add_argument(
        "--force", action="store_true", help="replace OUT even if it holds other files"
    )
    parser.add_argument(
        "--num-proc", type=int, default=os.cpu_count() or 1,
        help="processes decoding and encoding audio (default: every core)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    out = args.out
    try:
        with exclusive_lock(out):
            ours = (out / "dataset_dict.json").is_file() and (out / "config.yaml").is_file()
            if out.exists() and not out.is_dir():
                raise ConfigError(f"{out}: is a file, not a corpus directory; use another --out")
            if out.is_dir() and any(out.iterdir()) and not ours and not args.force:
                raise ConfigError(
                    f"{out}: a non-empty directory that is not a converted corpus; refusing to "
                    "replace it (use another --out, or --force to replace it)"
                )
            cfg = load_config(CorpusConfig, args.config, args.overrides)
            # rows stream to Arrow files in a scratch folder beside OUT, then are saved
            # beside the resolved config, atomically: a failed run leaves no half corpus;
            # a killed run's scratch folder goes first (we hold OUT's lock)
            for stale in out.parent.glob(f".{out.name}.convert-*"):
                shutil.rmtree(stale, ignore_errors=True)
            work = out.with_name(f".{out.name}.convert-{os.getpid()}")
            try:
                work.mkdir(parents=True)
                corpus = load_corpus(cfg, num_proc=max(1, args.num_proc), work_dir=work)
                with atomic_directory(out) as tmp:
                    corpus.save_to_disk(str(tmp))
                    save_config(cfg, tmp)
                counts = {split: len(ds) for split, ds in corpus.items()}
                del corpus  # its memory maps, before the scratch files go
            finally:
                shutil.rmtree(work, ignore_errors=True)
    except (ValueError, LockedError) as err:  # CorpusError, ConfigError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(counts, "->", out)
    return 0
