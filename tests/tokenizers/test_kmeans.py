"""Minibatch k-means, reservoir sampling, assignment and centroid files (mmllm.tokenizers.kmeans)."""

import json

import pytest
import torch

from mmllm.tokenizers.kmeans import (
    KMeansResult,
    _reseed_dead,
    assign,
    fit_kmeans,
    load_centroids,
    mean_inertia,
    sample_frames,
    save_centroids,
)

NOISE = 0.3


def blobs(seed: int = 0, per_blob: int = 500):
    """6 well-separated centres in 4-D (>= 8 apart) with isotropic noise of std 0.3."""
    centres = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],
            [10.0, 0.0, 0.0, 0.0],
            [0.0, 10.0, 0.0, 0.0],
            [0.0, 0.0, 10.0, 0.0],
            [0.0, 0.0, 0.0, 10.0],
            [8.0, 8.0, 8.0, 8.0],
        ]
    )
    generator = torch.Generator().manual_seed(seed)
    which = torch.arange(len(centres)).repeat_interleave(per_blob)
    frames = centres[which] + NOISE * torch.randn(len(which), 4, generator=generator)
    return frames[torch.randperm(len(which), generator=generator)], centres


def test_fit_recovers_blob_centres():
    frames, centres = blobs()
    result = fit_kmeans(frames, k=6, seed=0, batch_size=256, max_steps=60, progress=False)
    assert isinstance(result, KMeansResult)
    assert result.centroids.shape == (6, 4) and result.centroids.dtype == torch.float32
    assert result.steps == 60
    distances = torch.cdist(centres, result.centroids)  # [true, found]
    match = distances.argmin(dim=1)
    assert sorted(match.tolist()) == list(range(6)), "each centre found by its own centroid"
    assert distances.min(dim=1).values.max() < 0.1
    # Ideal inertia is D x sigma^2 = 4 x 0.09 = 0.36.
    assert 0.3 < result.inertia < 0.4


def test_inertia_is_mean_squared_distance_to_nearest_centroid():
    frames, _ = blobs(seed=1, per_blob=100)
    result = fit_kmeans(frames, k=4, seed=3, batch_size=128, max_steps=20, progress=False)
    brute = torch.cdist(frames.double(), result.centroids.double()).square().min(dim=1).values
    assert result.inertia == pytest.approx(float(brute.mean()), rel=1e-5)
    assert mean_inertia(frames, result.centroids) == pytest.approx(result.inertia, rel=1e-9)


def test_fit_is_deterministic_per_seed():
    frames, _ = blobs(seed=2, per_blob=200)
    first = fit_kmeans(frames, k=8, seed=5, batch_size=256, max_steps=30, progress=False)
    again = fit_kmeans(frames, k=8, seed=5, batch_size=256, max_steps=30, progress=False)
    other = fit_kmeans(frames, k=8, seed=6, batch_size=256, max_steps=30, progress=False)
    assert torch.equal(first.centroids, again.centroids)
    assert first.inertia == again.inertia
    assert not torch.equal(first.centroids, other.centroids)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="need N >= k"):
        fit_kmeans(torch.randn(5, 3), k=6, progress=False)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        fit_kmeans(torch.randn(50), k=2, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        fit_kmeans(torch.full((10, 2), float("nan")), k=2, progress=False)


def test_dead_centroids_are_moved_onto_far_batch_points():
    centroids = torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0]])
    counts = torch.tensor([400.0, 300.0, 1.0], dtype=torch.float64)  # the third starves
    batch = torch.tensor([[0.0, 0.1], [1.0, 0.1], [20.0, -20.0], [0.1, 0.0]])
    distances = torch.tensor([0.01, 0.01, 761.0, 0.01])
    _reseed_dead(centroids, counts, batch, distances, torch.Generator().manual_seed(0))
    assert torch.equal(centroids[2], batch[2]), "moved to the far point (by far the likeliest)"
    assert torch.equal(centroids[:2], torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert counts.tolist() == [400.0, 300.0, 300.0]  # given the least-used live count


def test_sample_frames_is_bounded_and_made_of_stream_rows():
    stream = torch.arange(5000, dtype=torch.float32)[:, None].repeat(1, 3)
    sizes = [1, 7, 992, 1500, 2500]
    batches = list(torch.split(stream, sizes))
    sample = sample_frames(iter(batches), max_frames=300, seed=0)
    assert sample.shape == (300, 3)
    assert torch.equal(sample[:, 0], sample[:, 2]), "rows are kept whole"
    values = sample[:, 0].long()
    assert values.unique().numel() == 300, "no row sampled twice"
    assert int(values.min()) >= 0 and int(values.max()) < 5000
    assert torch.equal(sample, sample_frames(iter(batches), 300, seed=0)), "deterministic"
    assert not torch.equal(sample, sample_frames(iter(batches), 300, seed=1))
    # Fewer rows than max_frames: all of them, in order.
    assert torch.equal(sample_frames(iter(batches[:2]), 300, seed=0), stream[:8])


def test_sample_frames_is_uniform():
    stream = torch.arange(20000, dtype=torch.float32)[:, None]
    batches = torch.split(stream, [3, 997, 4000, 15000])
    values = sample_frames(iter(batches), max_frames=2000, seed=7)[:, 0]
    # 10 bins of 2000 stream rows: ~200 samples each (binomial sd ~13.4).
    counts = torch.bincount((values // 2000).long(), minlength=10)
    assert counts.sum() == 2000
    assert int(counts.min()) > 150 and int(counts.max()) < 250, counts.tolist()
    assert float(values.mean()) == pytest.approx(10000, rel=0.04)


def test_sample_frames_errors():
    with pytest.raises(ValueError, match="empty"):
        sample_frames(iter([]), 10, seed=0)
    with pytest.raises(ValueError, match="dimension 2"):
        sample_frames(iter([torch.zeros(4, 3), torch.zeros(4, 2)]), 10, seed=0)


def test_assign_equals_brute_force_argmin():
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(1000, 8, generator=generator, dtype=torch.float64)
    centroids = torch.randn(37, 8, generator=generator, dtype=torch.float64)
    brute = torch.cdist(frames, centroids).argmin(dim=1)
    assert torch.equal(assign(frames, centroids), brute)
    assert torch.equal(assign(frames, centroids, chunk=100), brute)
    # float32: the chosen centroid is a nearest one (ties only up to rounding).
    labels = assign(frames.float(), centroids.float(), chunk=64)
    assert labels.dtype == torch.long and labels.shape == (1000,)
    chosen = (frames - centroids[labels]).square().sum(dim=1)
    best = torch.cdist(frames, centroids).square().min(dim=1).values
    assert torch.allclose(chosen, best, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    tensors = {"centroids": torch.randn(5, 3), "mfcc_mean": torch.arange(3.0)}
    card = {
        "feature_source": "test",
        "layers": [6],
        "k": 5,
        "data": "x",
        "num_frames": 10,
        "inertia": 1.5,
        "seed": 0,
    }
    save_centroids(tmp_path / "km", tensors, card)
    loaded, loaded_card = load_centroids(tmp_path / "km")
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)
    assert {k: loaded_card[k] for k in card} == card
    assert loaded_card["tensors"] == {"centroids": [5, 3], "mfcc_mean": [3]}
    assert loaded_card["date"].startswith("20")
    assert json.loads((tmp_path / "km" / "card.json").read_text()) == loaded_card
    assert sorted(p.name for p in (tmp_path / "km").iterdir()) == [
        "card.json",
        "centroids.safetensors",
    ]


def test_load_errors_name_directory_and_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing}: centroid directory not found"):
        load_centroids(missing)
    save_centroids(tmp_path / "km", {"centroids": torch.zeros(2, 2)}, {"k": 2})
    (tmp_path / "km" / "card.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'km'}: missing card.json"):
        load_centroids(tmp_path / "km")
    (tmp_path / "km" / "centroids.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing centroids.safetensors"):
        load_centroids(tmp_path / "km")
