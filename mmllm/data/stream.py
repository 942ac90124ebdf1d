"""Streaming training blocks: rendered and packed window by window in DataLoader workers,
each process reading only its own share, resumable from a saved position in O(1).

The mixture's epoch e is a list of draws (source, row, copy) in a seeded shuffled order
(`MixturePlan`: a function of (seed, epoch); ints per row, never tokens). The draws are cut
into windows of `window` documents, numbered across epochs (window g is part g % n of epoch
g // n, n windows per epoch). Window g belongs to *lane* g % lanes. A window is rendered
(rows read from the memory-mapped corpus and token caches), packed first-fit decreasing
into blocks of `block_size`, and its blocks shuffled with (seed, g).

An optimizer step takes `blocks_per_step / lanes` blocks from every lane, in lane order,
and process r of W owns lanes r, r + W, ... (W divides `lanes`). The global batch of a step
is therefore the same for any number of processes that divides `lanes` (the loss too), and
memory per process is a few windows, whatever the corpus size:

    plan = MixturePlan(row_counts, mixture, seed)
    stream = BlockStream(WindowSource(...), lanes=my_lanes, state=saved or None, workers=2)
    blocks = stream.take(per_lane)          # this step's blocks of this process, lane by lane
    state = stream.state()                  # {lane: [window slot, blocks used]}: JSON

A lane's position is (slot j: its window g = lane + j * lanes, blocks of it already used);
restoring it renders that one window again, so resuming costs the same in any epoch.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmllm.data.packing import PackedBlock, pack_window

DEFAULT_WINDOW = 2048  # documents packed together (first-fit decreasing) and shuffled


class MixturePlan:
    """Which rows each epoch of a mixture draws, and in which order.

    row_counts: rows of each source's split, in the order that numbers the sources of the
    draws (a `DrawRenderer`'s `row_counts()`, so the plan's source i is the renderer's);
    mixture: source -> passes per epoch (1.0 every row once, 0.25 a seeded quarter, 2.5 twice
    plus a seeded half). A row drawn k times in an epoch has copies 0..k-1 (each renders with
    its own seed: another crop or layout)."""

    def __init__(self, row_counts: dict[str, int], mixture: dict[str, float], seed: int):
        self.seed = seed
        self.sources = [s for s in row_counts if mixture.get(s, 0) > 0]
        self.row_counts = {s: row_counts[s] for s in self.sources}
        self.weights = {s: float(mixture[s]) for s in self.sources}
        self.draws_per_epoch = sum(
            int(self.weights[s]) * n + round((self.weights[s] % 1.0) * n)
            for s, n in self.row_counts.items()
        )
        if self.draws_per_epoch == 0:
            raise ValueError(f"data.mixture {mixture} draws no rows (weights or rows are 0)")

    def epoch_draws(self, epoch: int) -> np.ndarray:
        """[N, 3] int64 (source index into `sources`, row, copy) in the epoch's order."""
        rng = random.Random(f"mixture-{self.seed}-{epoch}")
        parts = []
        for index, source in enumerate(self.sources):
            rows, weight = self.row_counts[source], self.weights[source]
            whole, fraction = divmod(weight, 1.0)
            # floor(weight) full passes (pass k: copy k), then a seeded fraction of a pass
            drawn = [np.tile(np.arange(rows), int(whole))]
            drawn.append(np.sort(np.array(rng.sample(range(rows), round(fraction * rows)), int)))
            drawn = np.concatenate(drawn).astype(np.int64)
            copies = np.minimum(np.arange(len(drawn)) // max(rows, 1), int(whole))
            parts.append(np.stack([np.full(len(drawn), index), drawn, copies], 1))
        draws = np.concatenate(parts)
        order = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(draws))
        return draws[order]


@dataclass
class RenderedWindow:
    """The packed blocks of one window, as few tensors as possible (one shared-memory
    handle each when they cross from a worker): tokens [n, 4, L] (input_ids, labels,
    position_ids, document_ids per block), features [m, D] with per-block counts [n]."""

    lane: int
    slot: int
    tokens: torch.Tensor
    names: list[list[str]]
    features: torch.Tensor | None
    feature_counts: list[int]
    skipped: Counter

    def blocks(self) -> list[PackedBlock]:
        out, start = [], 0
        for i, names in enumerate(self.names):
            features = None
            if self.features is not None:
                count = self.feature_counts[i]
                features = self.features[start : start + count] if count else None
                start += count
            ids, labels, positions, documents = self.tokens[i]
            out.append(PackedBlock(ids, labels, positions, documents, names, features))
        return out


def stack_window(lane: int, slot: int, blocks: list[PackedBlock], skipped: Counter):
    tokens = torch.stack(
        [torch.stack([b.input_ids, b.labels, b.position_ids, b.document_ids]) for b in blocks]
    )
    frames = [b.features for b in blocks if b.features is not None]
    counts = [0 if b.features is None else len(b.features) for b in blocks]
    features = torch.cat(frames) if frames else None
    return RenderedWindow(lane, slot, tokens, [b.names for b in blocks], features, counts, skipped)


class WindowSource:
    """Renders window g of the plan: `render_draws(draws, epoch) -> (documents, skipped)`
    (a picklable callable holding the corpus, renderer and caches) packed into blocks."""

    def __init__(
        self,
        plan: MixturePlan,
        render_draws: Any,
        block_size: int,
        pad_id: int,
        lanes: int,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.plan, self.render_draws = plan, render_draws
        self.block_size, self.pad_id, self.lanes = block_size, pad_id, lanes
        self.window = window
        self.windows_per_epoch = -(-plan.draws_per_epoch // window)
        self._epoch, self._draws = -1, None

    def window_draws(self, g: int) -> tuple[int, np.ndarray]:
        epoch, part = divmod(g, self.windows_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._draws = epoch, self.plan.epoch_draws(epoch)
        return epoch, self._draws[part * self.window : (part + 1) * self.window]

    def render(self, lane: int, slot: int) -> RenderedWindow:
        g = lane + slot * self.lanes
        epoch, draws = self.window_draws(g)
        documents, skipped = self.render_draws(draws, epoch)
        blocks = pack_window(documents, self.block_size, self.pad_id)
        random.Random(f"blocks-{self.plan.seed}-{g}").shuffle(blocks)
        return stack_window(lane, slot, blocks, skipped)


class WindowDataset(IterableDataset):
    """The windows of `lanes` from their start slots, slot-major (slot j of every lane, then
    j + 1), dealt round-robin to the DataLoader's workers: the loader hands them back in
    exactly this order whatever the number of workers."""

    def __init__(self, source: WindowSource, starts: dict[int, int]) -> None:
        self.source, self.starts = source, starts

    def __iter__(self) -> Iterator[RenderedWindow]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        slot, item = min(self.starts.values()), 0
        while True:
            for lane in sorted(self.starts):
                if slot < self.starts[lane]:
                    continue
                if item % workers == worker:
                    yield self.source.render(lane, slot)
                item += 1
            slot += 1


class BlockStream:
    """The blocks of this process's lanes, step after step (main process side)."""

    def __init__(
        self,
        source: WindowSource,
        lanes: list[int],
        state: dict | None = None,
        workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        state = {int(k): v for k, v in (state or {}).items()}
        self.lanes = lanes
        missing = [lane for lane in lanes if state and lane not in state]
        if missing:
            raise ValueError(f"loader state has no position for lanes {missing}")
        position = {lane: tuple(state.get(lane, (0, 0))) for lane in lanes}
        self.slot = {lane: position[lane][0] for lane in lanes}
        self.used = {lane: position[lane][1] for lane in lanes}
        dataset = WindowDataset(source, dict(self.slot))
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
        )
        self._windows = iter(loader)
        self._pending: dict[int, deque[RenderedWindow]] = {lane: deque() for lane in lanes}
        self._current: dict[int, list[PackedBlock]] = {}
        self.skipped: Counter = Counter()

    def _next_window(self, lane: int) -> list[PackedBlock]:
        while not self._pending[lane]:
            window = next(self._windows)
            self._pending[window.lane].append(window)
        window = self._pending[lane].popleft()
        assert window.slot == self.slot[lane], (window.slot, self.slot[lane])
        self.skipped.update(window.skipped)
        return window.blocks()

    def take_lane(self, lane: int, count: int) -> list[PackedBlock]:
        out: list[PackedBlock] = []
        while len(out) < count:
            if lane not in self._current:
                self._current[lane] = self._next_window(lane)
            blocks = self._current[lane]
            room = blocks[self.used[lane] : self.used[lane] + count - len(out)]
            out += room
            self.used[lane] += len(room)
            if self.used[lane] >= len(blocks):  # this window is used up: the next slot
                del self._current[lane]
                self.slot[lane] += 1
                self.used[lane] = 0
        return out

    def take(self, per_lane: int) -> list[PackedBlock]:
        """The next `per_lane` blocks of each of this process's lanes, lane after lane."""
        return [block for lane in self.lanes for block in self.take_lane(lane, per_lane)]

    def state(self) -> dict[str, list[int]]:
        return {str(lane): [self.slot[lane], self.used[lane]] for lane in self.lanes}
