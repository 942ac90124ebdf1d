"""The package's import contracts (pyproject.toml [tool.importlinter], docs/design.md) hold,
and they catch a violation: an upward import hidden inside a function breaks them."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the `mmllm` package found first on the path from `cwd`."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command(['--no-cache']))",
        ],
        cwd=cwd,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )


def test_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


def test_a_lazy_upward_import_breaks_the_contracts(tmp_path):
    scratch = tmp_path / "repo"
    scratch.mkdir()
    shutil.copy(ROOT / "pyproject.toml", scratch)
    shutil.copytree(ROOT / "mmllm", scratch / "mmllm", ignore=shutil.ignore_patterns("__pycache__"))
    io = scratch / "mmllm" / "audio" / "io.py"
    # audio (a leaf) reaching up into eval, and eval already imports audio: a cycle
    io.write_text(io.read_text() + "\n\ndef _cycle():\n    from mmllm.eval import dasb  # noqa\n")
    result = lint_imports(scratch)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "mmllm.audio.io -> mmllm.eval.dasb" in result.stdout
    assert "Layers: each imports only the layers below it BROKEN" in result.stdout
