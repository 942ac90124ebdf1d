"""The repository layout keeps its promises: scripts folders are not packages."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tokenizers_folder_is_not_a_package():
    assert (ROOT / "tokenizers").is_dir()
    assert not (ROOT / "tokenizers" / "__init__.py").exists()


def test_hf_tokenizers_imports_from_repo_root():
    # Run from the repository root, where a local tokenizers/ package would shadow it.
    code = "import tokenizers, transformers; print(tokenizers.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "site-packages" in out.stdout, out.stdout


def test_synth_cli_rejects_bad_config_naming_the_key(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmllm",
            "synth",
            "--size",
            "tiny",
            "--out",
            str(tmp_path / "x"),
            "num_speakerz=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert (
        "command-line override 'num_speakerz=3': key 'num_speakerz': unknown key" in result.stderr
    )
    assert not (tmp_path / "x").exists()
