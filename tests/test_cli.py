"""The `mmllm` command: every subcommand answers --help with its defaults, and the old
script paths are the same commands."""

import subprocess
import sys
from pathlib import Path

import pytest

from mmllm.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[1]

# subcommand -> a default its --help must show (a config's default or an option's)
SHOWN_DEFAULT = {
    "synth": "num_speakers:",
    "convert": "replace OUT even if it holds other files",
    "fit": "(default: 500000)",
    "extract": "(default: 256)",
    "stats": "(default: asr)",
    "text-tokenizer": "(default: 1024)",
    "pretrain": "run_dir: runs/pretrain/default",
    "vocoder": "hidden_size: 192",
    "eval": "(default: 32)",
    "compare": "default: RUN0/../report",
    "generate": "(default: auto)",
}


def test_every_subcommand_is_checked():
    assert set(SHOWN_DEFAULT) == set(SUBCOMMANDS)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_help_shows_the_defaults(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mmllm {name}")
    assert SHOWN_DEFAULT[name] in out


def test_unknown_subcommand_lists_the_known_ones(capsys):
    assert main(["tokenise"]) == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'tokenise'" in err and "extract" in err


def test_python_m_mmllm_and_the_old_paths_run_the_same_commands():
    for command in (
        [sys.executable, "-m", "mmllm", "extract", "--help"],
        [sys.executable, "tokenizers/extract.py", "--help"],
    ):
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert out.startswith("usage: mmllm extract")
    out = subprocess.run(
        [sys.executable, "-m", "mmllm.generate", "--help"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert out.startswith("usage: mmllm generate")
