"""Benchmark: mmllm's minibatch k-means against scikit-learn's MiniBatchKMeans.

    python bench/kmeans.py [--source blobs|synthdasb] [--data DIR] [--frames 200000] [--dim 39]
                           [--k 500] [--batch-size 4096] [--epochs 4] [--repeats 3] [--device cpu]

Both fit the same float32 frames with the same k, batch size and number of minibatch steps
(scikit-learn's steps = epochs x N // batch_size; ours is given that many max_steps), both
seed with greedy k-means++ on 3 x batch_size frames, both re-seed starved centroids, neither
stops early. Time is wall-clock for the whole fit (initialisation included), best and median
of `--repeats` runs; inertia is the mean squared distance of all frames to their nearest
centroid, computed by the same function (`mmllm.tokenizers.kmeans.mean_inertia`) for both.
Writes bench/results/kmeans.json (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mmllm.fileio import atomic_write_text
from mmllm.runtime import machine_facts, utc_timestamp
from mmllm.tokenizers.kmeans import fit_kmeans, mean_inertia

RESULTS = Path(__file__).resolve().parent / "results" / "kmeans.json"


def gaussian_blobs(num_frames: int, dim: int, num_blobs: int, seed: int) -> torch.Tensor:
    """[num_frames, dim] float32: isotropic unit-variance blobs around N(0, 4^2) centres."""
    generator = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(num_blobs, dim, generator=generator)
    which = torch.randint(num_blobs, (num_frames,), generator=generator)
    return centres[which] + torch.randn(num_frames, dim, generator=generator)


def synthdasb_mfcc(data_dir: Path, num_frames: int, seed: int) -> torch.Tensor:
    """Stacked MFCC frames (mfcc-kmeans features, [n, 26], corpus-normalised) of every split,
    sampled as fitting samples them."""
    from mmllm.tokenizers.backends.offline_fit import fit_frames

    splits = ("train", "valid", "test")
    return fit_frames("mfcc-kmeans", data_dir, None, splits, num_frames, seed).frames


def time_ours(frames: torch.Tensor, args, steps: int) -> tuple[float, float, int]:
    if frames.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fit_kmeans(
        frames, args.k, seed=args.seed, batch_size=args.batch_size, max_steps=steps, progress=False
    )
    if frames.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return seconds, result.inertia, result.steps


def time_sklearn(frames: torch.Tensor, args) -> tuple[float, float, int]:
    from sklearn.cluster import MiniBatchKMeans

    data = frames.cpu().numpy()
    model = MiniBatchKMeans(
        n_clusters=args.k,
        batch_size=args.batch_size,
        max_iter=args.epochs,
        n_init=1,
        max_no_improvement=None,  # no early stopping: run all steps, like ours
        tol=0.0,
        compute_labels=False,
        random_state=args.seed,
    )
    started = time.perf_counter()
    model.fit(data)
    seconds = time.perf_counter() - started
    inertia = mean_inertia(frames.cpu(), torch.from_numpy(model.cluster_centers_).float())
    return seconds, inertia, int(model.n_steps_)


def summary(runs: list[tuple[float, float, int]]) -> dict:
    seconds = [r[0] for r in runs]
    return {
        "seconds_best": round(min(seconds), 3),
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds_all": [round(s, 3) for s in seconds],
        "inertia": round(statistics.median(r[1] for r in runs), 5),
        "steps": runs[0][2],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=["blobs", "synthdasb"], default="blobs")
    parser.add_argument(
        "--data", type=Path, default=None, help="SynthDASB dir (--source synthdasb)"
    )
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=39, help="blob dimension")
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument(
        "--epochs", type=int, default=4, help="passes over the frames (sklearn max_iter)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="device for ours (sklearn is CPU only)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        import sklearn
    except ImportError:
        print("error: this benchmark needs scikit-learn: pip install scikit-learn", file=sys.stderr)
        return 2

    if args.source == "blobs":
        frames = gaussian_blobs(args.frames, args.dim, args.k, args.seed)
        source = f"gaussian blobs ({args.k} centres ~ N(0, 16 I), unit noise)"
    else:
        if args.data is None:
            parser.error("--source synthdasb needs --data DIR")
        frames = synthdasb_mfcc(args.data, args.frames, args.seed)
        source = f"mfcc-kmeans frames of SynthDASB {args.data}"
    steps = args.epochs * frames.shape[0] // args.batch_size  # what sklearn will take
    ours_frames = frames.to(args.device)

    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(time_ours(ours_frames, args, steps))
        theirs.append(time_sklearn(frames, args))
    ours_summary, sklearn_summary = summary(ours), summary(theirs)
    report = {
        "benchmark": "minibatch k-means: mmllm.tokenizers.kmeans.fit_kmeans vs sklearn MiniBatchKMeans",
        "source": source,
        "frames": list(frames.shape),
        "k": args.k,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "ours": {**ours_summary, "device": str(args.device)},
        "sklearn": sklearn_summary,
        "ratios": {
            "speedup_best (sklearn s / ours s)": round(
                sklearn_summary["seconds_best"] / ours_summary["seconds_best"], 3
            ),
            "speedup_median": round(
                sklearn_summary["seconds_median"] / ours_summary["seconds_median"], 3
            ),
            "inertia (ours / sklearn)": round(
                ours_summary["inertia"] / sklearn_summary["inertia"], 4
            ),
        },
        "machine": machine_facts() | {"sklearn": sklearn.__version__},
        "date": utc_timestamp(),
    }
    text = json.dumps(report, indent=2)
    atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
