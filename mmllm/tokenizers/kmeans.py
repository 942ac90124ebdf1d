"""Minibatch k-means in torch, reservoir sampling of frames, and centroid files.

    frames = sample_frames(feature_batches, max_frames=1_000_000, seed=0)   # [N, D], flat memory
    result = fit_kmeans(frames.cuda(), k=500, seed=0)                        # runs where frames live
    codes = assign(frames, result.centroids)                                 # [N] nearest centroid
    save_centroids("runs/km", {"centroids": result.centroids}, card={...})

`fit_kmeans` is Sculley's (2010) web-scale k-means: k-means++ seeding on a random subset,
then minibatch steps in which every centroid moves toward the points assigned to it with
learning rate 1 / (points it has ever been assigned), i.e. each centroid is the running mean
of its assignments. Centroids that starve (almost never assigned) are re-seeded on far-away
points of the current batch, like scikit-learn's MiniBatchKMeans. All randomness comes from
one seeded CPU `torch.Generator`, so a seed gives the same centroids on CPU every time (and the
same sampled indices on GPU, where float reductions may still differ in the last bits).

Centroid directories hold `centroids.safetensors` (named tensors) and `card.json` (what was
clustered: feature source, layers, k, data, frames, inertia, seed, date); nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mmllm.fileio import atomic_write_bytes, atomic_write_text, file_sha256

CENTROIDS_FILENAME = "centroids.safetensors"
CARD_FILENAME = "card.json"

# A centroid whose assignment count is below this fraction of the busiest one is dead.
REASSIGNMENT_RATIO = 0.01


@dataclasses.dataclass
class KMeansResult:
    """centroids [k, D] float32; inertia = mean squared distance of the frames to their nearest
    centroid (over all frames given to fit_kmeans); steps = minibatch steps taken."""

    centroids: torch.Tensor
    inertia: float
    steps: int


def assign(frames: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Nearest centroid by squared Euclidean distance. frames [N, D], centroids [k, D] -> [N] int64.

    Uses ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 (the ||x||^2 term does not change the argmin),
    `chunk` rows at a time so memory stays at chunk x k. Runs on the frames' device.
    """
    if frames.dim() != 2 or centroids.dim() != 2 or frames.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"assign: expected frames [N, D] and centroids [k, D], got "
            f"{tuple(frames.shape)} and {tuple(centroids.shape)}"
        )
    dtype = frames.dtype if frames.is_floating_point() else torch.float32
    centroids = centroids.to(device=frames.device, dtype=dtype)
    centroid_norms = centroids.square().sum(dim=1)
    out = torch.empty(frames.shape[0], dtype=torch.long, device=frames.device)
    for start in range(0, frames.shape[0], chunk):
        block = frames[start : start + chunk].to(dtype)
        scores = torch.addmm(centroid_norms[None, :], block, centroids.T, alpha=-2.0)
        out[start : start + chunk] = scores.argmin(dim=1)
    return out


def _nearest(frames: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """frames [n, D] -> (nearest centroid [n], exact squared distance to it [n])."""
    labels = assign(frames, centroids)
    distances = (frames - centroids[labels]).square().sum(dim=1)
    return labels, distances


def mean_inertia(frames: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> float:
    """Mean squared distance of frames [N, D] to their nearest centroid (float64 sum)."""
    total = 0.0
    for start in range(0, frames.shape[0], chunk):
        block = frames[start : start + chunk].float()
        total += float(_nearest(block, centroids)[1].double().sum())
    return total / max(frames.shape[0], 1)


def _kmeans_plus_plus(frames: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; 2 + log k trials per centroid, the
    variant scikit-learn uses). frames [n, D] -> centroids [k, D]. Sampling happens on the CPU
    generator; distances are computed on the frames' device."""
    n = frames.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = frames.new_empty(k, frames.shape[1])
    centroids[0] = frames[first]
    closest = (frames - frames[first]).square().sum(dim=1)
    for index in range(1, k):
        weights = closest.double().cpu()
        if float(weights.sum()) <= 0.0:  # every point already is a centroid: pick uniformly
            weights = torch.ones(n, dtype=torch.float64)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)
        candidates = candidates.to(frames.device)
        candidate_distances = torch.cdist(frames[candidates], frames).square()  # [trials, n]
        candidate_closest = torch.minimum(closest[None, :], candidate_distances)
        best = int(candidate_closest.double().sum(dim=1).argmin())
        centroids[index] = frames[candidates[best]]
        closest = candidate_closest[best]
    return centroids


def fit_kmeans(
    frames: torch.Tensor,
    k: int,
    seed: int = 0,
    batch_size: int = 4096,
    max_steps: int = 200,
    progress: bool = True,
) -> KMeansResult:
    """Minibatch k-means. frames [N, D] (any float dtype; computed in float32 on frames.device).

    1. k-means++ on a random subset of max(3 x batch_size, 3 x k) frames (all if fewer).
    2. `max_steps` steps: draw `batch_size` frames (with replacement), assign each to its
       nearest centroid, move centroid c to the running mean of every frame ever assigned to
       it: c <- c + (sum_batch(x) - n_batch c) / count_c, which is Sculley's per-point update
       with learning rate 1 / count applied to the whole batch at once.
    3. About every 10 x k frames, centroids assigned fewer than 1% as often as the busiest
       are moved onto batch frames drawn in proportion to their squared distance (far points).

    Deterministic for a seed on CPU. Returns centroids [k, D] float32 on frames.device, the
    mean squared distance of all frames to their nearest centroid, and the steps taken.
    """
    if frames.dim() != 2:
        raise ValueError(f"fit_kmeans: frames must be [N, D], got shape {tuple(frames.shape)}")
    n, _ = frames.shape
    if k < 1:
        raise ValueError(f"fit_kmeans: k must be >= 1, got {k}")
    if n < k:
        raise ValueError(f"fit_kmeans: {n} frames cannot make {k} clusters (need N >= k)")
    if batch_size < 1 or max_steps < 0:
        raise ValueError(f"fit_kmeans: bad batch_size={batch_size} or max_steps={max_steps}")
    frames = frames.float()
    if not torch.isfinite(frames).all():
        raise ValueError("fit_kmeans: frames contain NaN or Inf")
    device = frames.device
    generator = torch.Generator().manual_seed(seed)

    init_size = min(n, max(3 * batch_size, 3 * k))
    init_index = torch.randperm(n, generator=generator)[:init_size].to(device)
    centroids = _kmeans_plus_plus(frames[init_index], k, generator)

    counts = torch.zeros(k, dtype=torch.float64, device=device)
    reassign_every = max(1, math.ceil(10 * k / batch_size))
    steps_since_reassign = 0
    smoothed = None
    bar = tqdm(total=max_steps, desc=f"k-means k={k}", unit="step", disable=not progress)
    for _step in range(max_steps):
        batch_index = torch.randint(n, (min(batch_size, n),), generator=generator).to(device)
        batch = frames[batch_index]
        labels, distances = _nearest(batch, centroids)

        batch_counts = torch.bincount(labels, minlength=k).to(torch.float64)
        batch_sums = torch.zeros_like(centroids).index_add_(0, labels, batch)
        counts += batch_counts
        hit = batch_counts > 0
        rate = (1.0 / counts[hit]).float()[:, None]
        centroids[hit] += rate * (
            batch_sums[hit] - batch_counts[hit].float()[:, None] * centroids[hit]
        )

        steps_since_reassign += 1
        if steps_since_reassign >= reassign_every:
            steps_since_reassign = 0
            _reseed_dead(centroids, counts, batch, distances, generator)

        batch_inertia = float(distances.mean())
        smoothed = batch_inertia if smoothed is None else 0.9 * smoothed + 0.1 * batch_inertia
        bar.update()
        if progress:
            bar.set_postfix(batch_inertia=f"{smoothed:.4g}", refresh=False)
    bar.close()
    return KMeansResult(
        centroids=centroids.contiguous(), inertia=mean_inertia(frames, centroids), steps=max_steps
    )


def _reseed_dead(
    centroids: torch.Tensor,
    counts: torch.Tensor,
    batch: torch.Tensor,
    distances: torch.Tensor,
    generator: torch.Generator,
) -> None:
    """Move starved centroids onto batch frames drawn with probability ~ squared distance."""
    dead = counts < REASSIGNMENT_RATIO * counts.max()
    num_dead = int(dead.sum())
    if num_dead == 0:
        return
    num_dead = min(num_dead, batch.shape[0] // 2)
    dead_index = dead.nonzero().squeeze(1)[:num_dead]
    weights = distances.double().cpu()
    if int((weights > 0).sum()) < num_dead:
        return  # too few distinct far points to move them to
    picks = torch.multinomial(weights, num_dead, replacement=False, generator=generator)
    centroids[dead_index] = batch[picks.to(batch.device)]
    # Give them the weight of the least-used live centroid: they can still move fast, but
    # are not judged dead again before they have had a chance to attract points.
    counts[dead_index] = counts[~dead].min()


def sample_frames(
    frame_batches: Iterable[torch.Tensor], max_frames: int, seed: int
) -> torch.Tensor:
    """Uniform sample of at most `max_frames` rows from a stream of [n_i, D] batches.

    Reservoir sampling (Vitter's algorithm R, vectorised per batch): row t of the stream
    (0-based) replaces a uniformly drawn slot j in [0, t] if j < max_frames, so every row ends
    up in the sample with the same probability and memory stays at max_frames x D however long
    the stream is. The reservoir lives on the CPU in float32. Deterministic in `seed`.
    Returns [min(max_frames, total rows), D].
    """
    if max_frames < 1:
        raise ValueError(f"sample_frames: max_frames must be >= 1, got {max_frames}")
    generator = torch.Generator().manual_seed(seed)
    reservoir: torch.Tensor | None = None
    seen = 0
    for batch in frame_batches:
        if batch.dim() != 2:
            raise ValueError(f"sample_frames: batches must be [n, D], got {tuple(batch.shape)}")
        batch = batch.detach().to("cpu", torch.float32)
        if reservoir is None:
            reservoir = torch.empty(max_frames, batch.shape[1])
        elif batch.shape[1] != reservoir.shape[1]:
            raise ValueError(
                f"sample_frames: batch has dimension {batch.shape[1]}, earlier batches "
                f"{reservoir.shape[1]}"
            )
        rows = batch.shape[0]
        fill = max(0, min(rows, max_frames - seen))
        reservoir[seen : seen + fill] = batch[:fill]
        if fill < rows:
            positions = torch.arange(seen + fill, seen + rows, dtype=torch.float64)
            draws = torch.rand(rows - fill, generator=generator, dtype=torch.float64)
            slots = torch.floor(draws * (positions + 1)).long()
            keep = (slots < max_frames).nonzero().squeeze(1)
            if keep.numel():
                # Rows later in the stream win a slot drawn twice (sequential semantics).
                reversed_slots = slots[keep].flip(0).numpy()
                _, first_in_reversed = np.unique(reversed_slots, return_index=True)
                winners = keep.flip(0)[torch.from_numpy(first_in_reversed)]
                reservoir[slots[winners]] = batch[fill:][winners]
        seen += rows
    if reservoir is None:
        raise ValueError("sample_frames: no frames (the stream was empty)")
    return reservoir[: min(seen, max_frames)].clone()


# ----------------------------------------------------------------------------- files


def save_centroids(directory: str | Path, centroids: dict[str, torch.Tensor], card: dict) -> None:
    """Write `directory`/centroids.safetensors (named tensors, float32 kept as given) and
    `directory`/card.json, each atomically; the card is written last, so a directory with a
    card always has its centroids. A `date` (UTC, ISO 8601) is added to the card if absent."""
    from safetensors.torch import save

    if not centroids:
        raise ValueError(f"{directory}: no centroid tensors to save")
    directory = Path(directory)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in centroids.items()}
    card = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **card,
        "tensors": {name: list(t.shape) for name, t in tensors.items()},
    }
    atomic_write_bytes(directory / CENTROIDS_FILENAME, save(tensors))
    atomic_write_text(
        directory / CARD_FILENAME, json.dumps(card, indent=2, sort_keys=True, default=str) + "\n"
    )


def load_centroids(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what `save_centroids` wrote -> (named tensors on CPU, card)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: centroid directory not found")
    for filename in (CENTROIDS_FILENAME, CARD_FILENAME):
        if not (directory / filename).is_file():
            raise FileNotFoundError(f"{directory}: missing {filename} (not a centroid directory?)")
    try:
        card = json.loads((directory / CARD_FILENAME).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{directory}: {CARD_FILENAME} is not valid JSON ({err})") from err
    return load_file(str(directory / CENTROIDS_FILENAME)), card


def centroids_digest(centroids: str | None) -> str | None:
    """sha256 of a k-means tokenizer's centroids.safetensors (None without centroids): two
    k-means fits with the same k give unrelated codes, so a vocoder is tied to one fit."""
    if not centroids:
        return None
    path = Path(centroids) / CENTROIDS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: centroids not found (needed to identify the codes)")
    return file_sha256(path)
