"""The vocoder's training data: random aligned segments of (codes, audio, speaker) drawn
from a token cache (checked against its tokenizer by `mmllm.data.cache.read_cache_card`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mmllm.tokenizers.vocoder import UNKNOWN_SPEAKER, VocoderConfig

# Code frames a tokenizer may give below ceil(samples / hop): the SSL k-means tokenizers
# give floor((T - 400) / 320) + 1 (mmllm.tokenizers.backends.ssl), 1 or 2 below.
MAX_DROPPED_FRAMES = 2


class SegmentSampler:
    """Random aligned (codes, audio) segments of a SynthDASB-layout corpus and its cache.

    Rows: the `audio` stream of `tasks` x `split` with at least `segment_frames` code
    frames (codes from CachedSplit(cache_dir/task/split), audio decoded from the corpus
    row on every draw: nothing is held in memory but the index). A segment of code frames
    [s, s + L) pairs with samples [s * hop, (s + L) * hop) (zero-padded past the end).
    An entry of T samples has ceil(T / hop) frames, or up to MAX_DROPPED_FRAMES fewer: the
    SSL tokenizers' conv encoders drop the last frames whose receptive field (400 samples
    at hop 320) would pass the end, and their frame f covers samples [f * hop, f * hop +
    400), a fixed offset the vocoder learns like any other.
    """

    def __init__(
        self, data_dir: str | Path, cache_dir: str | Path, cache_card: dict, cfg: VocoderConfig
    ) -> None:
        from mmllm.corpus.reader import load_task
        from mmllm.data.cache import CachedSplit, CacheError

        self.cfg = cfg
        self.datasets, self.caches, self.row_speakers = [], [], []
        self.items: list[tuple[int, int, str, int]] = []  # (task index, row, key, frames)
        fingerprints = cache_card["corpus"]["fingerprints"]
        for t, task in enumerate(cfg.tasks):
            splits = load_task(data_dir, task)
            if cfg.split not in splits:
                raise KeyError(f"{data_dir}/{task}: no split {cfg.split!r} (has {list(splits)})")
            rows = splits[cfg.split]
            if fingerprints.get(task, {}).get(cfg.split) != rows._fingerprint:
                raise CacheError(
                    f"{cache_dir}: token cache of {task}/{cfg.split} was not built from "
                    f"{data_dir} (corpus fingerprint differs)"
                )
            cached = CachedSplit(Path(cache_dir) / task / cfg.split)
            self.datasets.append(rows.select_columns(["id", "audio"]))
            self.row_speakers.append(rows["speaker"])
            self.caches.append(cached)
            entries = cached.entries
            self.items += [
                (t, row, key, frames)
                for row, stream, frames, key in zip(
                    entries["row"].tolist(),
                    entries["stream"].tolist(),
                    entries["frames"].tolist(),
                    cached.entry_keys(),
                    strict=True,
                )
                if stream == 0 and frames >= cfg.segment_frames  # stream 0: the row's audio
            ]
        if not self.items:
            raise ValueError(
                f"{data_dir}: no rows of {cfg.tasks}/{cfg.split} with >= {cfg.segment_frames} code frames"
            )
        self.speakers = sorted({s for column in self.row_speakers for s in column if s})
        self.speaker_index = {name: i + 1 for i, name in enumerate(self.speakers)}

    def sample(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (codes [B, K, L] int64, wav [B, L * hop] float32, speakers [B] int64, 0 =
        unknown: no speaker, or dropped with probability cfg.speaker_dropout)."""
        from mmllm.audio.io import decode_audio_value
        from mmllm.data.cache import CacheError

        length, hop = self.cfg.segment_frames, self.cfg.hop
        codes, wavs, speakers = [], [], []
        for pick in torch.randint(len(self.items), (batch_size,), generator=generator).tolist():
            t, row, key, frames = self.items[pick]
            start = int(torch.randint(frames - length + 1, (1,), generator=generator))
            dropped = float(torch.rand(1, generator=generator)) < self.cfg.speaker_dropout
            record = self.datasets[t][row]
            wav = decode_audio_value(record["audio"], self.cfg.sample_rate, name=key)
            short = math.ceil(wav.size / hop) - frames
            if record["id"] != key or not 0 <= short <= MAX_DROPPED_FRAMES:
                raise CacheError(
                    f"cache entry {key!r} ({frames} frames) does not match corpus row {row} "
                    f"({record['id']!r}, {wav.size} samples: ceil(samples / {hop}) frames, or "
                    f"up to {MAX_DROPPED_FRAMES} fewer); rebuild the token cache"
                )
            segment = torch.zeros(length * hop)
            piece = torch.from_numpy(wav[start * hop : (start + length) * hop])
            segment[: piece.numel()] = piece
            wavs.append(segment)
            codes.append(
                torch.from_numpy(
                    self.caches[t].get(key)[:, start : start + length].astype(np.int64)
                )
            )
            speaker = self.speaker_index.get(self.row_speakers[t][row], UNKNOWN_SPEAKER)
            speakers.append(UNKNOWN_SPEAKER if dropped else speaker)
        return torch.stack(codes).long(), torch.stack(wavs), torch.tensor(speakers)
