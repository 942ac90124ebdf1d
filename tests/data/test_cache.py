"""Token cache: codes match direct encoding, bad rows are skipped and counted, kill -9 resumes exactly."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_tokenizer import EnergyTokenizer

from mmllm.audio.io import decode_audio_value
from mmllm.corpus.reader import load_task
from mmllm.corpus.schema import make_row, rows_to_dataset
from mmllm.data.cache import (
    CachedSplit,
    CacheError,
    MissingCodes,
    check_or_write_card,
    extract_corpus,
)
from mmllm.tokenizers.base import TokenizerConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENERGY = TokenizerConfig(name="test-energy")


def direct_codes(value: dict) -> np.ndarray:
    wav = torch.from_numpy(decode_audio_value(value))
    codes, frames = EnergyTokenizer(ENERGY).encode(wav[None], torch.tensor([wav.numel()]))
    return codes[0, :, : frames[0]].numpy()


def test_cached_codes_equal_direct_encoding(synth_tiny, tmp_path):
    out = extract_corpus(
        ENERGY,
        synth_tiny,
        tmp_path / "cache",
        tasks=["se", "ks"],
        rows_per_part=5,
        max_batch_seconds=5,
    )
    for task in ("se", "ks"):
        data = load_task(synth_tiny, task)
        for split in ("train", "test"):
            cached = CachedSplit(out / task / split)
            assert len(cached) == sum(1 + len(r) for r in data[split]["refs"])
            for row in data[split].select(range(7)):
                np.testing.assert_array_equal(cached.get(row["id"]), direct_codes(row["audio"]))
                for j, ref in enumerate(row["refs"]):
                    np.testing.assert_array_equal(
                        cached.get(f"{row['id']}#ref{j}"), direct_codes(ref)
                    )
    # the parts are the shards: 5 rows per part, nothing but their codes left once indexed
    shards = out / "ks" / "train" / "shards"
    num_rows = len(load_task(synth_tiny, "ks")["train"])
    assert sorted(p.name for p in shards.iterdir()) == [
        f"{part:06d}.bin" for part in range((num_rows + 4) // 5)
    ]
    card = json.loads((out / "cache.json").read_text())
    assert card["tokenizer"]["name"] == "test-energy" and (out / "config.yaml").is_file()
    # naming a vocoder (decode side only) keeps the cache valid
    with_vocoder = dataclasses.replace(ENERGY, vocoder="runs/vocoders/x")
    check_or_write_card(out, with_vocoder, EnergyTokenizer(ENERGY), card["corpus"])
    # a copied project (corpus and cache elsewhere) keeps its cache: the card compares the
    # corpus's content (fingerprints), not its path
    moved_corpus = shutil.copytree(synth_tiny, tmp_path / "moved" / "corpus")
    moved_cache = shutil.copytree(out, tmp_path / "moved" / "cache")
    index = (moved_cache / "se" / "test" / "index.json").read_bytes()
    extract_corpus(ENERGY, moved_corpus, moved_cache, tasks=["se", "ks"], rows_per_part=5)
    assert (moved_cache / "se" / "test" / "index.json").read_bytes() == index
    # a cache made for another tokenizer config is refused
    with pytest.raises(CacheError, match="another tokenizer config"):
        extract_corpus(
            TokenizerConfig(name="test-energy", options={"other": 1}),
            synth_tiny,
            out,
            tasks=["se"],
        )


def test_bad_rows_are_skipped_counted_and_named(tmp_path, capsys):
    wav = np.sin(np.arange(8000) / 5).astype(np.float32) * 0.3
    rows = [make_row(f"ks-{i}", "ks", wav, label="yes") for i in range(4)]
    rows[2]["audio"] = {"bytes": b"definitely not a wav", "path": None}
    from datasets import DatasetDict

    corpus = tmp_path / "corpus"
    DatasetDict({"train": rows_to_dataset(rows, "bad")}).save_to_disk(str(corpus / "ks"))
    out = extract_corpus(ENERGY, corpus, tmp_path / "cache", splits=("train",), rows_per_part=2)
    cached = CachedSplit(out / "ks" / "train")
    assert cached.entry_keys() == ["ks-0", "ks-1", "ks-3"]
    assert [s["id"] for s in cached.skipped] == [
        "ks-2"
    ] and "cannot decode audio" in cached.skipped[0]["error"]
    assert " at 0x" not in cached.skipped[0]["error"]  # no memory address: identical reruns
    printed = capsys.readouterr().out
    assert "skipped ks/train row ks-2" in printed and "1 rows skipped" in printed


def test_rows_read_by_corpus_row_equal_rows_read_by_key(synth_tiny, tmp_path):
    """get_row (what training reads: by corpus row and stream) gives get(key)'s codes."""
    out = extract_corpus(ENERGY, synth_tiny, tmp_path / "cache", tasks=["ss"], splits=("test",))
    cached = CachedSplit(out / "ss" / "test")
    rows = load_task(synth_tiny, "ss")["test"]
    for index, row_id in enumerate(rows["id"][:5]):
        np.testing.assert_array_equal(cached.get_row(index, 0), cached.get(row_id))
        np.testing.assert_array_equal(cached.get_row(index, 2), cached.get(f"{row_id}#ref1"))
    with pytest.raises(MissingCodes, match="row 999999"):
        cached.get_row(999999)


def test_an_unfinished_extraction_refuses_other_parts(synth_tiny, tmp_path):
    """A rerun that cuts rows into other parts would encode some twice (2,652 of 6,000 rows
    were doubled): refused naming the value to use; the same value finishes the cache
    exactly as an uninterrupted run."""
    from mmllm.data.cache import extract_split
    from mmllm.tokenizers.registry import build_tokenizer

    reference = extract_corpus(ENERGY, synth_tiny, tmp_path / "ref", tasks=["ks"], rows_per_part=4)
    out = tmp_path / "cache"
    rows = load_task(synth_tiny, "ks")["train"]
    tokenizer = build_tokenizer(ENERGY)
    extract_split(tokenizer, rows, out / "ks" / "train", 4, 16000 * 8, 0, 2)  # half the parts
    with pytest.raises(CacheError, match="rerun with --rows-per-part 4 \\(not 5\\)"):
        extract_corpus(ENERGY, synth_tiny, out, tasks=["ks"], rows_per_part=5)
    extract_corpus(ENERGY, synth_tiny, out, tasks=["ks"], rows_per_part=4)
    for path in sorted((reference / "ks").rglob("*")):
        if path.is_file():
            assert (out / path.relative_to(reference)).read_bytes() == path.read_bytes(), path


def run_extract(data: Path, out: Path, sleep: float) -> subprocess.Popen:
    code = (
        "import sys, fake_tokenizer; from mmllm.data.cache import extract_corpus; "
        "from mmllm.tokenizers.base import TokenizerConfig; "
        "extract_corpus(TokenizerConfig(name='test-energy'), sys.argv[1], sys.argv[2], "
        "tasks=['asr', 'ss'], rows_per_part=4, max_batch_seconds=4)"
    )
    env = dict(
        os.environ,
        PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        FAKE_TOKENIZER_SLEEP=str(sleep),
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(data), str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_kill_9_then_rerun_gives_the_uninterrupted_cache(synth_tiny, tmp_path):
    reference = tmp_path / "reference"
    assert run_extract(synth_tiny, reference, sleep=0.0).wait(timeout=300) == 0
    killed = tmp_path / "killed"

    def progress() -> int:  # parts written so far (merged splits count all of theirs)
        return len(list(killed.rglob("shards/*.json"))) + 100 * len(
            list(killed.rglob("index.json"))
        )

    for _ in range(2):  # kill -9 twice after it has made some progress
        before = progress()
        process = run_extract(synth_tiny, killed, sleep=0.05)
        deadline = time.time() + 120
        while time.time() < deadline and progress() < before + 2:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    assert list(killed.rglob("shards/0*.json")), "the kills should have left finished parts"
    assert run_extract(synth_tiny, killed, sleep=0.0).wait(timeout=300) == 0
    assert not list(killed.rglob("*.tmp-*")) and not list(killed.rglob("shards/*.json"))
    for path in sorted(reference.rglob("*")):
        if path.is_file():
            assert (killed / path.relative_to(reference)).read_bytes() == path.read_bytes(), path
    shutil.rmtree(killed)


def test_two_process_launch_matches_one_process(synth_tiny, tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    script = str(HERE / "run_fake_extract.py")
    single = subprocess.run(
        [sys.executable, script, str(synth_tiny), str(tmp_path / "one"), "ks,sv"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr
    # On CPU accelerate starts one process; torchrun starts two that form a gloo group.
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    sharded = subprocess.run(
        [*launch, script, str(synth_tiny), str(tmp_path / "two"), "ks,sv"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert sharded.returncode == 0, sharded.stderr
    assert "by process 0 of 2" in sharded.stdout
    for path in sorted((tmp_path / "one").rglob("*")):
        if path.is_file():
            assert (
                tmp_path / "two" / path.relative_to(tmp_path / "one")
            ).read_bytes() == path.read_bytes(), path


def test_stats_report_from_a_cache(synth_tiny, tmp_path):
    from mmllm.data.token_stats import save_report, token_statistics

    out = extract_corpus(ENERGY, synth_tiny, tmp_path / "cache", tasks=["asr"], splits=("test",))
    report = token_statistics(out, synth_tiny, "asr", "test")
    assert report["bitrate_bps"] == 2 * 4 * 50 and report["tokens_per_second"] == 100
    level, index = report["codebooks"]
    assert 0 < level["usage"] <= 1 and 1 <= level["perplexity"] <= 16
    assert index["usage"] == 1.0  # frame index mod 16 uses every code
    assert 0 < index["purity"] <= 1 and level["frames_in_words"] > 0.5 * level["frames"]
    json_path, png_path = save_report(report, tmp_path / "report")
    assert json_path.is_file() and png_path.read_bytes()[:4] == b"\x89PNG"


def test_a_damaged_codes_file_is_named(tiny_tokens, tmp_path):
    """A shard cut short is refused on open; bytes flipped into impossible codes are
    refused on read, naming the shard and the row (training used to stop without either)."""
    split = shutil.copytree(tiny_tokens["cache"] / "ks" / "train", tmp_path / "s")
    codes = split / "shards" / "000000.bin"
    data = bytearray(codes.read_bytes())
    first = CachedSplit(split).entry_keys()[0]
    data[:8] = b"\xff\x7f" * 4  # uint16 32767 in the first row: no codebook of 32 has it
    codes.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=rf"000000\.bin: codes of '{first}' outside \[0, 32\)"):
        CachedSplit(split).get(first)
    codes.write_bytes(bytes(data[:-10]))
    with pytest.raises(CacheError, match=r"000000\.bin: \d+ bytes, its split's index\.json says"):
        CachedSplit(split)


def test_a_refit_into_the_same_directory_is_not_served_stale_codes(tiny_tokens, tmp_path):
    """The cache is keyed by the centroids' content, not their path: refitting k-means into
    the same directory used to reuse the old codes silently."""
    centroids = shutil.copytree(tiny_tokens["centroids"], tmp_path / "centroids")
    cfg = dataclasses.replace(tiny_tokens["tokenizer"], centroids=str(centroids))
    cache = tmp_path / "cache"
    extract_corpus(cfg, tiny_tokens["corpus"], cache, tasks=["ks"], splits=("test",))
    extract_corpus(cfg, tiny_tokens["corpus"], cache, tasks=["ks"], splits=("test",))  # reused
    # a card written before content hashes, read with a copy of the same centroids elsewhere
    # (a checkpoint's packaged tokenizer): the same codes, accepted
    card = json.loads((cache / "cache.json").read_text())
    del card["codes_hash"]
    (cache / "cache.json").write_text(json.dumps(card))
    copy = shutil.copytree(centroids, tmp_path / "packaged")
    extract_corpus(
        dataclasses.replace(cfg, centroids=str(copy)), tiny_tokens["corpus"], cache, tasks=["ks"],
        splits=("test",),
    )  # fmt: skip
    from mmllm.tokenizers.kmeans import CENTROIDS_FILENAME

    weights = centroids / CENTROIDS_FILENAME
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # "refitted"
    with pytest.raises(CacheError, match=r"other k-means centroids \(refitted\?\)"):
        extract_corpus(cfg, tiny_tokens["corpus"], cache, tasks=["ks"], splits=("test",))
