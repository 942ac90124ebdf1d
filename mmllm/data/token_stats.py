"""What a tokenizer's codes look like on a corpus: usage, perplexity, bitrate, word purity.

    report = token_statistics(cache_dir, corpus_dir, task="asr", split="test")

Per codebook:
    usage        fraction of the codebook's codes that occur at least once
    perplexity   exp(entropy) of the code distribution (how many codes are effectively used)
    purity       on frames inside a word (SynthDASB word alignments): the share of frames
                 whose code's most frequent word is their word; 1.0 means every code
                 belongs to one word (interpretable units), low values mean codes are shared
    word_entropy_bits  H(word | code) on the same frames, lower is more word-specific

Purity grows with the number of codes (a code per frame would be perfectly pure), so compare
tokenizers at similar codebook sizes, or look at it next to perplexity.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from datasets import load_from_disk

from mmllm.data.cache import CACHE_CARD, CachedSplit
from mmllm.fileio import atomic_write_text


def frame_words(words: list[dict], num_frames: int, frame_rate_hz: float) -> list[str | None]:
    """The word covering each frame's centre, or None outside words. words: [{word, start, end}]."""
    labels: list[str | None] = [None] * num_frames
    for word in words:
        first = max(int(np.ceil(word["start"] * frame_rate_hz - 0.5)), 0)
        last = min(int(np.floor(word["end"] * frame_rate_hz - 0.5)), num_frames - 1)
        for frame in range(first, last + 1):
            labels[frame] = word["word"]
    return labels


def codebook_statistics(codes: np.ndarray, codebook_size: int, labels: list[str | None]) -> dict:
    """codes [N] of one codebook over all frames, labels [N] (word or None) -> statistics."""
    counts = np.bincount(codes, minlength=codebook_size).astype(np.float64)
    probs = counts / max(counts.sum(), 1.0)
    nonzero = probs[probs > 0]
    by_code: dict[int, Counter] = defaultdict(Counter)
    for code, label in zip(codes.tolist(), labels, strict=True):
        if label is not None:
            by_code[code][label] += 1
    in_words = sum(sum(c.values()) for c in by_code.values())
    majority = sum(max(c.values()) for c in by_code.values())
    entropy = 0.0
    for counter in by_code.values():
        total = sum(counter.values())
        p = np.array(list(counter.values()), dtype=np.float64) / total
        entropy += total / max(in_words, 1) * float(-(p * np.log2(p)).sum())
    return {
        "usage": float((counts > 0).mean()),
        "perplexity": float(np.exp(-(nonzero * np.log(nonzero)).sum())),
        "purity": majority / in_words if in_words else None,
        "word_entropy_bits": entropy if in_words else None,
        "frames": int(codes.size),
        "frames_in_words": int(in_words),
    }


def token_statistics(
    cache_dir: str | Path, corpus_dir: str | Path, task: str = "asr", split: str = "test"
) -> dict:
    """Statistics of one cached task/split, using the corpus rows' word alignments."""
    cache_dir, corpus_dir = Path(cache_dir), Path(corpus_dir)
    card = json.loads((cache_dir / CACHE_CARD).read_text())
    props = card["tokenizer_properties"]
    cached = CachedSplit(cache_dir / task / split)
    rows = load_from_disk(str(corpus_dir / task))[split]
    per_codebook_codes: list[list[np.ndarray]] = [[] for _ in range(cached.num_codebooks)]
    labels: list[str | None] = []
    seconds = 0.0
    for row in rows:
        if row["id"] not in cached.by_key:
            continue  # skipped as bad audio
        codes = cached.get(row["id"]).astype(np.int64)
        labels.extend(frame_words(row["words"], codes.shape[1], props["frame_rate_hz"]))
        for k in range(cached.num_codebooks):
            per_codebook_codes[k].append(codes[k])
        seconds += codes.shape[1] / props["frame_rate_hz"]
    codebooks = [
        codebook_statistics(np.concatenate(chunks), props["codebook_size"], labels)
        for chunks in per_codebook_codes
    ]
    return {
        "tokenizer": props["name"],
        "task": task,
        "split": split,
        "bitrate_bps": props["bitrate_bps"],
        "frame_rate_hz": props["frame_rate_hz"],
        "tokens_per_second": props["frame_rate_hz"] * props["num_codebooks"],
        "audio_seconds": seconds,
        "codebooks": codebooks,
    }


def save_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write stats.json and stats.png (perplexity and purity per codebook) into out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "stats.json"
    atomic_write_text(json_path, json.dumps(report, indent=1))
    books = report["codebooks"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    index = np.arange(len(books))
    axes[0].bar(index, [b["perplexity"] for b in books])
    axes[0].set(title="code perplexity", xlabel="codebook", ylabel="exp(entropy)")
    axes[1].bar(index, [b["purity"] or 0.0 for b in books], color="tab:orange")
    axes[1].set(title="word purity", xlabel="codebook", ylim=(0, 1))
    for axis in axes:
        axis.set_xticks(index)  # one integer tick per codebook
    fig.suptitle(
        f"{report['tokenizer']} on {report['task']}/{report['split']} ({report['bitrate_bps']:.0f} bps)"
    )
    fig.tight_layout()
    png_path = out_dir / "stats.png"
    tmp = out_dir / ".stats.png.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(png_path)
    return json_path, png_path
