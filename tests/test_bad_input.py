"""Bad input and concurrent writers, tried the way a user meets them: the real CLIs as
subprocesses. Each case exits 2 with one line naming the path, prints no traceback, and
leaves what was already on disk unchanged (hashed before and after)."""

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*argv, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def refused(result: subprocess.CompletedProcess, *named: str) -> str:
    """Assert exit 2, no traceback, and every `named` string in the message -> stderr."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    for text in named:
        assert text in result.stderr, result.stderr
    return result.stderr


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        digest.update(str(file.relative_to(path.parent)).encode() + file.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds the output lock of a path, as a running writer would;
    yields (start(path) -> pid)."""
    processes = []

    def start(path: Path) -> int:
        code = (
            "import sys, time\nfrom mmllm.fileio import exclusive_lock\n"
            f"with exclusive_lock({str(path)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout.readline().strip() == "held"
        processes.append(process)
        return process.pid

    yield start
    for process in processes:
        process.kill()
        process.wait()


def test_synth_refuses_a_directory_it_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    before = tree_digest(out)
    refused(run("-m", "mmllm", "synth", "--size", "tiny", "--out", out), str(out), "--force")
    assert tree_digest(out) == before


def test_synth_refuses_a_file_as_output(tmp_path):
    out = tmp_path / "corpus"
    out.write_text("not a directory")
    refused(run("-m", "mmllm", "synth", "--size", "tiny", "--out", out), str(out), "is a file")
    assert out.read_text() == "not a directory" and sorted(tmp_path.iterdir()) == [
        tmp_path / ".corpus.lock",
        out,
    ]


def test_synth_second_writer_is_refused_naming_the_holder(tmp_path, holder):
    out = tmp_path / "corpus"
    pid = holder(out)
    refused(run("-m", "mmllm", "synth", "--size", "tiny", "--out", out), str(out), f"pid {pid}")
    assert not out.exists()


def test_extract_second_writer_is_refused_naming_the_holder(tiny_tokens, tmp_path, holder):
    out = tmp_path / "cache"
    pid = holder(out)
    config = ROOT / "configs" / "tokenizers" / "mfcc-kmeans.yaml"
    result = run(
        "tokenizers/extract.py", "--tokenizer", config, "--data", tiny_tokens["corpus"],
        "--out", out, *tiny_tokens["overrides"],
    )  # fmt: skip
    refused(result, str(out), f"pid {pid}")
    assert not out.exists()


def test_pretrain_second_writer_is_refused_naming_the_holder(tmp_path, holder):
    run_dir = tmp_path / "run"
    pid = holder(run_dir)
    started = time.perf_counter()
    result = run(
        "train/pretrain.py", "--config", ROOT / "configs/pretrain/tiny.yaml",
        f"run_dir={run_dir}", "train.deepspeed=null",
    )  # fmt: skip
    refused(result, str(run_dir), f"pid {pid}")
    assert time.perf_counter() - started < 60  # refused before any data work
    assert not run_dir.exists()
