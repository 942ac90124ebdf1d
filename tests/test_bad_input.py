"""Bad input and concurrent writers, tried the way a user meets them: the real CLIs as
subprocesses. Each case exits 2 with one line naming the path, prints no traceback, and
leaves what was already on disk unchanged (hashed before and after)."""

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

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


@pytest.mark.parametrize(
    "argv, named",
    [
        (["eval", "--checkpoint", "x", "--limit", "0"], "--limit: expected a whole number >= 1"),
        (["eval", "--checkpoint", "x", "--batch-size", "0"], "--batch-size"),
        (["eval", "--checkpoint", "x", "--split", "trian"], "invalid choice: 'trian'"),
        (["eval", "--checkpoint", "x", "--tasks", "asr,kws"], "unknown 'kws'"),
        (["extract", "--config", "c.yaml", "--data", "README.md", "--out", "o"], "README.md: not"),
        (["extract", "--config", "c.yaml", "--data", "mmllm", "--out", "README.md"], "is a file"),
        (["extract", "--config", "c", "--data", "mmllm", "--out", "o", "--splits", "trian"], "'trian'"),
        (["extract", "--config", "c", "--data", "mmllm", "--out", "o", "--rows-per-part", "0"], ">= 1"),
        (["vocoder", "--tokenizer", "c", "--data", "d", "--cache", "c", "--out", "o", "steps=0"], "'steps'"),
        (["pretrain", "--config", "configs/pretrain/tiny.yaml", "train..steps=5"], "'train..steps=5'"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_with_one_named_line(argv, named):
    result = run("-m", "mmllm", *argv)
    refused(result, named)
    assert not (ROOT / "o").exists()


def test_compare_names_a_corrupt_report(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "eval").mkdir(parents=True)
    report = run_dir / "eval" / "dasb.json"
    report.write_text('{"tasks": {"ks": {"accuracy"')
    refused(run("-m", "mmllm", "compare", run_dir, "--out", tmp_path / "r"), str(report))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_device_check_fails_at_once_without_cuda():
    result = subprocess.run(
        ["bash", "bench/device_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "device_check: no CUDA device on this machine (torch.cuda.is_available() is False)"
    )
