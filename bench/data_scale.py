"""Benchmark: how the training data pipeline's memory, start-up and resume grow with the corpus.

    python bench/data_scale.py [--scales 1,4,16,64] [--codebooks 1,8] [--old-max-scale 4]

Builds, under runs/data_scale/, corpora of 1x, 4x, 16x and 64x the default config's corpus's
training rows (the committed JSON: SynthDASB small with its 1252-word sentences, the default
until 2026-12-06) (the rows repeated with new ids; valid and test as they are; no audio columns: training
reads none) and token caches in the real on-disk format with random codes, the real cache's
frame count for every entry, and 1 or 8 codebooks. Then one fresh process per measurement
runs, with the default mixture and model:

    streaming        mmllm.data.stream, what train/pretrain.py runs (2 loader workers)
    epoch_in_memory  the pipeline it replaced, kept here as the baseline: a whole epoch
                     rendered and packed before its first step, every training row rendered
                     once more for the length check, resume by rebuilding epochs 0..E

and records peak RSS of the training process (its loader workers apart; also its peak
anonymous RSS, without the page cache of the memory-mapped files), seconds from start
to the first optimizer step done, loader tokens/s (blocks taken without training), and the
seconds to resume at a step in epoch 0 and in epoch 3. Needs the default config's data
(`accelerate launch train/pretrain.py` builds it). Writes bench/results/data_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "data_scale"
RESULTS = ROOT / "bench" / "results" / "data_scale.json"
CODEBOOK_SIZE = 500
BLOCK = {1: 1024, 8: 8192}  # 8 codebooks flattened: 8x longer documents
MICRO = {1: (4, 2), 8: (1, 1)}  # (micro_batch_size, grad_accum): ~8k tokens per step


def corpus_dir(scale: int) -> Path:
    return WORK / f"corpus-x{scale}"


def cache_dir(scale: int, codebooks: int) -> Path:
    from mmllm.data.cached_split import FORMAT

    return WORK / f"tokens-v{FORMAT}-x{scale}-k{codebooks}"


def build_corpus(source: Path, scale: int) -> Path:
    """SynthDASB small's rows (no audio) with the train split repeated `scale` times."""
    from datasets import DatasetDict, concatenate_datasets

    from mmllm.corpus.reader import corpus_tasks, load_task
    from mmllm.data.mixture import ROW_COLUMNS

    out = corpus_dir(scale)
    if (out / "done").is_file():
        return out
    for task in corpus_tasks(source):
        data = load_task(source, task)
        splits = {}
        for split, rows in data.items():
            rows = rows.select_columns([c for c in ROW_COLUMNS if c in rows.column_names])
            if split == "train" and scale > 1:
                copies = [
                    rows.map(lambda b, j=j: {"id": [f"{i}~{j}" for i in b["id"]]}, batched=True)
                    for j in range(scale)
                ]
                rows = concatenate_datasets(copies)
            splits[split] = rows
        DatasetDict(splits).save_to_disk(str(out / task))
    (out / "done").write_text("")
    return out


def build_cache(real: Path, scale: int, codebooks: int) -> Path:
    """A token cache of the scaled corpus: the real cache's entries (frames per row and
    stream) repeated like the rows, random codes, the cached split format."""
    import numpy as np

    from mmllm.data.cached_split import INDEX, CachedSplit, shard_path, write_split_index
    from mmllm.fileio import atomic_open, atomic_write_text

    out = cache_dir(scale, codebooks)
    if (out / "done").is_file():
        return out
    rng = np.random.default_rng(scale * 100 + codebooks)
    card = json.loads((real / "cache.json").read_text())
    card["tokenizer_properties"] |= {"num_codebooks": codebooks, "codebook_size": CODEBOOK_SIZE}
    card["tokenizer_hash"] = f"bench-x{scale}-k{codebooks}"
    card["codes_hash"] = card["tokenizer_hash"]
    for split_dir in sorted(p for p in real.glob("*/*") if (p / INDEX).is_file()):
        cached = CachedSplit(split_dir)
        copies = scale if split_dir.name == "train" else 1
        rows = cached.index["num_rows"]
        keys = cached.entry_keys()
        target = out / split_dir.parent.name / split_dir.name
        table, names = [], []
        frames = cached.entries["frames"]
        for j in range(copies):  # copy j of the rows is shard j
            offset = 0
            for entry, key, count in zip(
                cached.entries.tolist(), keys, frames.tolist(), strict=True
            ):
                table.append((entry[0] + j * rows, entry[1], j, offset, count))
                head, _, ref = key.partition("#")
                names.append((f"{head}~{j}" if copies > 1 else head) + (f"#{ref}" if ref else ""))
                offset += count * codebooks
            with atomic_open(shard_path(target, j)) as handle:
                for start in range(0, offset, 1 << 24):
                    chunk = rng.integers(0, CODEBOOK_SIZE, min(1 << 24, offset - start))
                    handle.write(chunk.astype(np.uint16).tobytes())
        header = {"num_rows": rows * copies, "num_codebooks": codebooks, "dtype": "uint16"}
        header |= {"codebook_size": CODEBOOK_SIZE, "shards": copies, "skipped": []}
        write_split_index(target, table, names, header)
    atomic_write_text(out / "cache.json", json.dumps(card))
    (out / "done").write_text("")
    return out


# ----------------------------------------------------------------------------- one measurement


class AnonymousPeak:
    """Peak anonymous resident memory of this process (RssAnon in /proc/self/status,
    sampled every 20 ms). ru_maxrss also counts the file pages of the memory-mapped corpus
    and caches a process has touched: page cache the kernel drops under pressure, which
    grows with how much of a bigger corpus a run reads, not with what it holds."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**30


def measure(pipeline: str, scale: int, codebooks: int, loader_seconds: float) -> dict:
    """Runs in its own process: the numbers of one row."""
    started = time.perf_counter()
    anonymous = AnonymousPeak()
    import torch
    from transformers import AutoTokenizer

    from mmllm.data.mixture import TokenCaches
    from mmllm.data.templates import TemplateRenderer
    from mmllm.data.vocab import MultimodalVocab, extend_hf_tokenizer
    from mmllm.pretrain.build import build_model, make_optimizer
    from mmllm.pretrain.config import PretrainConfig
    from mmllm.pretrain.schedule import count_targets, micro_batches
    from mmllm.pretrain.steps import token_loss_sum

    torch.set_num_threads(2)
    cfg = PretrainConfig()
    text = AutoTokenizer.from_pretrained(Path(cfg.run_dir) / "text_tokenizer")
    vocab = MultimodalVocab(len(text), [("mfcc-kmeans", codebooks, CODEBOOK_SIZE)])
    extend_hf_tokenizer(text, vocab)
    renderer = TemplateRenderer(vocab, text, "mfcc-kmeans", frame_rate_hz=50.0)
    caches = TokenCaches.open(cache_dir(scale, codebooks))
    corpus = corpus_dir(scale)
    block = BLOCK[codebooks]
    micro, accum = MICRO[codebooks]
    model = build_model(cfg.model, vocab, block, 0)
    optimizer = make_optimizer(model, cfg.optim)
    if pipeline == "streaming":
        take, resume, tokens_per_epoch = streaming(
            cfg, corpus, renderer, caches, vocab, block, micro * accum
        )
    else:
        take, resume, tokens_per_epoch = in_memory(
            cfg, corpus, renderer, caches, vocab, block, micro * accum
        )
    blocks = take()
    for batch in micro_batches(blocks, accum):
        loss, _ = token_loss_sum(model, batch, torch.float32)
        (loss / count_targets(blocks)).backward()
    optimizer.step()
    first_step = time.perf_counter() - started
    tokens, loader_started = 0, time.perf_counter()
    while time.perf_counter() - loader_started < loader_seconds:
        tokens += sum(b.used for b in take())
    loader_rate = tokens / (time.perf_counter() - loader_started)
    resume_seconds = {f"epoch_{e}": round(resume(e), 2) for e in (0, 3)}
    return {
        "pipeline": pipeline,
        "scale": scale,
        "codebooks": codebooks,
        "tokens_per_epoch": tokens_per_epoch,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak_anonymous_rss_gb": round(anonymous.stop(), 3),
        "workers_peak_rss_gb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3
        ),
        "seconds_to_first_step": round(first_step, 2),
        "loader_tokens_per_s": round(loader_rate),
        "resume_seconds": resume_seconds,
    }


def streaming(cfg, corpus, renderer, caches, vocab, block, per_step):
    from mmllm.data.mixture import SOURCES, DrawRenderer, weighted_sources
    from mmllm.data.stream import BlockStream, MixturePlan, WindowSource

    sources = weighted_sources(cfg.data.mixture, SOURCES)
    draw = DrawRenderer(corpus, renderer, caches, sources, "train", 0)
    plan = MixturePlan(draw.row_counts(), cfg.data.mixture, 0)
    source = WindowSource(plan, draw, block, vocab.pad_audio_id, 1, cfg.data.window)
    stream = BlockStream(source, [0], workers=2)

    def resume(epoch: int) -> float:
        started = time.perf_counter()
        slot = epoch * source.windows_per_epoch + 1
        BlockStream(source, [0], {"0": [slot, 3]}, workers=2).take(per_step)
        return time.perf_counter() - started

    # tokens of an epoch: the plan's draws times the mean document length of one window
    documents, _ = draw(plan.epoch_draws(0)[: cfg.data.window], 0)
    mean = sum(len(d.input_ids) for d in documents) / max(1, len(documents))
    return lambda: stream.take(per_step), resume, round(mean * plan.draws_per_epoch)


def in_memory(cfg, corpus, renderer, caches, vocab, block, per_step):
    from mmllm.data.mixture import SOURCES, mixture_documents, weighted_sources
    from mmllm.data.packing import pack_documents

    def epoch_blocks(epoch: int) -> list:
        documents, _ = mixture_documents(corpus, renderer, caches, cfg.data.mixture, epoch=epoch)
        blocks = list(pack_documents(documents, block, vocab.pad_audio_id))
        random.Random(f"blocks-0-{epoch}").shuffle(blocks)
        return blocks

    # the length check rendered every training row once
    every_row = {s: 1.0 for s in weighted_sources(cfg.data.mixture, SOURCES)}
    mixture_documents(corpus, renderer, caches, every_row)
    blocks = epoch_blocks(0)
    tokens = sum(b.used for b in blocks)
    position = [0]

    def take() -> list:
        """Its loader rate is the rate it builds epochs at (blocks of a built epoch cost
        nothing to hand out): the next epoch is built every time one's worth is taken."""
        position[0] += per_step
        if position[0] * block >= tokens:
            position[0] = 0
            epoch_blocks(1)
        return blocks[:per_step]

    def resume(epoch: int) -> float:
        started = time.perf_counter()
        for e in range(epoch + 1):  # locate() rebuilt every epoch up to the step's
            epoch_blocks(e)
        return time.perf_counter() - started

    return take, resume, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1,4,16,64")
    parser.add_argument("--codebooks", default="1,8")
    parser.add_argument("--old-max-scale", type=int, default=4)
    parser.add_argument("--loader-seconds", type=float, default=20.0)
    parser.add_argument("--measure", nargs=3, metavar=("PIPELINE", "SCALE", "CODEBOOKS"))
    args = parser.parse_args(argv)
    if args.measure:
        pipeline, scale, codebooks = args.measure[0], int(args.measure[1]), int(args.measure[2])
        print(json.dumps(measure(pipeline, scale, codebooks, args.loader_seconds)))
        return 0
    from mmllm.config import load_config
    from mmllm.data.cache import token_cache_dir
    from mmllm.fileio import atomic_write_text
    from mmllm.pretrain.config import PretrainConfig
    from mmllm.runtime import machine_facts, utc_timestamp
    from mmllm.tokenizers.base import TokenizerConfig

    cfg = PretrainConfig()
    tokenizer_cfg = load_config(TokenizerConfig, cfg.tokenizers.input)
    real = token_cache_dir(cfg.tokenizers.cache_dir, tokenizer_cfg)
    scales = [int(s) for s in args.scales.split(",")]
    codebooks = [int(k) for k in args.codebooks.split(",")]
    rows = []
    for scale in scales:
        build_corpus(Path(cfg.corpus.path), scale)
        for k in codebooks:
            build_cache(real, scale, k)
            pipelines = ["streaming"] + (["epoch_in_memory"] if scale <= args.old_max_scale else [])
            for pipeline in pipelines:
                command = [sys.executable, __file__, "--measure", pipeline, str(scale), str(k)]
                command += ["--loader-seconds", str(args.loader_seconds)]
                result = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    env=os.environ | {"OMP_NUM_THREADS": "2"},
                )
                if result.returncode:
                    print(result.stderr[-3000:], file=sys.stderr)
                    return 1
                rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    report = {
        "benchmark": "data_scale",
        "date": utc_timestamp(),
        "machine": machine_facts(),
        "rows": rows,
    }
    atomic_write_text(RESULTS, json.dumps(report, indent=1) + "\n")
    print(f"-> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
