"""Tokenizer speed, all measured in one run: audio-seconds per wall-second for each backend,
batched vs one-by-one encoding, and reading the token cache vs re-encoding.

    python bench/tokenizer_speed.py [--data DIR] [--seconds 60] [--out bench/results/tokenizer_speed.json]

Pretrained backends are built with random weights from their default (base) configs: speed
does not depend on the weights, and no machine here can download them. Targets on CPU:
batched EnCodec >= 3x one-by-one; cache read >= 100x re-encoding.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmllm.audio.io import decode_audio_value
from mmllm.corpus.reader import load_task
from mmllm.data.cache import CachedSplit, extract_corpus
from mmllm.fileio import atomic_write_text
from mmllm.runtime import keep_freed_memory, machine_facts
from mmllm.synth.build import SynthConfig, build
from mmllm.tokenizers.base import TokenizerConfig, pad_batch
from mmllm.tokenizers.registry import build_tokenizer


def pretrained_random(kind: str, directory: Path) -> str:
    """save_pretrained a random-init model of the backend's class with its default config."""
    import transformers

    model = {
        "encodec": lambda: transformers.EncodecModel(transformers.EncodecConfig()),
        "dac": lambda: transformers.DacModel(transformers.DacConfig()),
        "mimi": lambda: transformers.MimiModel(transformers.MimiConfig()),
    }[kind]()
    path = directory / kind
    model.save_pretrained(path)
    if kind == "encodec":  # the feature extractor is part of what from_pretrained reads
        transformers.EncodecFeatureExtractor(sampling_rate=24000).save_pretrained(path)
    return str(path)


def waveforms(data: Path, seconds: float, sample_rate: int) -> list[torch.Tensor]:
    """ASR test utterances (16 kHz corpus, resampled) up to `seconds` of audio."""
    out, total = [], 0.0
    for row in load_task(data, "asr")["test"]:
        wav = torch.from_numpy(
            decode_audio_value(row["audio"], target_sr=sample_rate, name=row["id"])
        )
        out.append(wav)
        total += wav.numel() / sample_rate
        if total >= seconds:
            break
    return out


def time_encode(tokenizer, wavs: list[torch.Tensor], batch_size: int) -> float:
    """Audio-seconds per wall-second, encoding `batch_size` items at a time (sorted by length)."""
    wavs = sorted(wavs, key=lambda w: w.numel())
    audio = sum(w.numel() for w in wavs) / tokenizer.sample_rate
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(wavs), batch_size):
            tokenizer.encode(*pad_batch(wavs[i : i + batch_size]))
    return audio / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="SynthDASB dir (default: build tiny in a temp dir)"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per measurement")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tokenizer_speed.json"))
    args = parser.parse_args(argv)
    results_malloc = keep_freed_memory()  # as extract.py does (mmllm/runtime.py)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="mmllm-bench-"))
    data = args.data or build(SynthConfig.from_name("tiny"), work / "synth")
    from mmllm.tokenizers.backends.offline_fit import fit_offline_tokenizer

    configs = {
        "mfcc-kmeans": TokenizerConfig(
            name="mfcc-kmeans", codebook_size=100,
            centroids=str(fit_offline_tokenizer("mfcc-kmeans", data, work / "mfcc", k=100, num_codebooks=1,
                                                max_frames=50000, seed=0)),
        ),
        "mel-rvq": TokenizerConfig(
            name="mel-rvq", num_codebooks=4, codebook_size=64,
            centroids=str(fit_offline_tokenizer("mel-rvq", data, work / "rvq", k=64, num_codebooks=4,
                                                max_frames=50000, seed=0)),
        ),
        "encodec-6kbps": TokenizerConfig(name="encodec", weights=pretrained_random("encodec", work), bandwidth_kbps=6.0),
        "dac": TokenizerConfig(name="dac", weights=pretrained_random("dac", work)),
        "mimi-8": TokenizerConfig(name="mimi", weights=pretrained_random("mimi", work), num_codebooks=8),
    }  # fmt: skip
    results: dict = {
        "machine": machine_facts() | {"glibc_keep_freed_memory": results_malloc},
        "audio_seconds_per_measurement": args.seconds,
        "batch_size": args.batch_size,
        "backends": {},
    }
    for name, cfg in configs.items():
        tokenizer = build_tokenizer(cfg)
        wavs = waveforms(data, args.seconds, tokenizer.sample_rate)
        one = time_encode(tokenizer, wavs, batch_size=1)
        batched = time_encode(tokenizer, wavs, batch_size=args.batch_size)
        results["backends"][name] = {
            "bitrate_bps": tokenizer.bitrate_bps,
            "one_by_one_audio_s_per_s": round(one, 1),
            "batched_audio_s_per_s": round(batched, 1),
            "batched_over_one_by_one": round(batched / one, 2),
        }
        print(name, results["backends"][name], flush=True)
    # cache read vs re-encode, on the ASR test split
    for name in ("mfcc-kmeans", "encodec-6kbps"):
        cache = extract_corpus(
            configs[name], data, work / "cache" / name, tasks=["asr"], splits=("test",)
        )
        started = time.perf_counter()
        tokenizer = build_tokenizer(configs[name])
        wavs = waveforms(data, float("inf"), tokenizer.sample_rate)
        with torch.inference_mode():
            for i in range(0, len(wavs), args.batch_size):
                tokenizer.encode(*pad_batch(wavs[i : i + args.batch_size]))
        encode_seconds = time.perf_counter() - started
        started = time.perf_counter()
        split = CachedSplit(cache / "asr" / "test")
        total = sum(int(split.get(key).sum() >= 0) for key in split.entry_keys())
        read_seconds = time.perf_counter() - started
        results["backends"][name]["cache"] = {
            "entries": total,
            "decode_and_encode_seconds": round(encode_seconds, 4),
            "cache_read_seconds": round(read_seconds, 5),
            "read_over_encode_speedup": round(encode_seconds / read_seconds, 1),
        }
        print(name, "cache", results["backends"][name]["cache"], flush=True)
    encodec = results["backends"]["encodec-6kbps"]
    results["targets"] = {
        "encodec batched / one-by-one >= 3": encodec["batched_over_one_by_one"],
        "met: encodec batched": encodec["batched_over_one_by_one"] >= 3,
        **{f"{name} cache read / re-encode >= 100": b["cache"]["read_over_encode_speedup"]
           for name, b in results["backends"].items() if "cache" in b},
        **{f"met: {name} cache": b["cache"]["read_over_encode_speedup"] >= 100
           for name, b in results["backends"].items() if "cache" in b},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1))
    print(json.dumps(results["targets"], indent=1), "->", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
