"""Fitting the offline tokenizers (mfcc-kmeans, mel-rvq) on a corpus: feature frames of
the training split, CMVN statistics, k-means / residual k-means, and the fitted
tokenizer's directory (centroids + card).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from mmllm.audio.features import FeatureStats
from mmllm.runtime import resolve_device
from mmllm.tokenizers.backends.offline import (
    DEFAULT_CMVN,
    DEFAULT_CODEBOOK_SIZE,
    DEFAULT_NUM_CODEBOOKS,
    MEL_N_MELS,
    MFCC_STACK,
    OFFLINE_TOKENIZERS,
    SAMPLE_RATE,
    cmvn_mfcc_frames,
    feature_spec,
    log_mel_float64,
    mel_rvq_features,
    mfcc_dim,
    offline_cmvn,
    offline_deltas,
    stack_mfcc,
)
from mmllm.tokenizers.base import (
    TokenizerConfig,
    pad_batch,
)
from mmllm.tokenizers.kmeans import (
    assign,
    fit_kmeans,
    sample_frames,
    save_centroids,
)


def _feature_batches(
    name: str,
    waveforms: Iterator[torch.Tensor],
    device: torch.device,
    stats: FeatureStats | None,
    batch_items: int = 16,
    cmvn: str = "corpus",
    deltas: bool = False,
) -> Iterator[torch.Tensor]:
    """Waveforms -> [n, D] frames of the tokenizer's features (valid frames only).
    mfcc-kmeans: stacked MFCC [n, 26] ([n, 78] with deltas), per-utterance normalised
    (`cmvn: utterance`, `stats` None) or raw (normalised after the pass with the corpus
    statistics `stats` gathers). mel-rvq: log-mel [n, 80] ([n, 240] with deltas), raw or
    per-utterance normalised (`cmvn: utterance`; `stats` then gathers each utterance's raw band
    means and sds, of the 80 static bands only)."""

    def flush(items: list[torch.Tensor]) -> torch.Tensor:
        wav, lengths = pad_batch(items)
        wav = wav.to(device)
        if name == "mfcc-kmeans":
            mfcc, frame_lengths = cmvn_mfcc_frames(wav, lengths, cmvn, deltas)
            valid = [mfcc[b, : MFCC_STACK * int(n)] for b, n in enumerate(frame_lengths)]
            if stats is not None:
                for item in valid:
                    stats.update(item)
            return torch.cat([v.reshape(-1, MFCC_STACK * mfcc.shape[-1]) for v in valid])
        log_mel, frame_lengths = log_mel_float64(wav, lengths)
        if cmvn == "utterance":
            for b, n in enumerate(frame_lengths.tolist()):
                if n:  # one row per utterance: its band means, then its sds
                    item = log_mel[b, :n]
                    stats.update(torch.cat([item.mean(0), item.std(0, unbiased=False)])[None])
        frames = mel_rvq_features(log_mel, frame_lengths, cmvn, deltas)  # as encode
        return torch.cat([frames[b, : int(n)] for b, n in enumerate(frame_lengths)])

    items: list[torch.Tensor] = []
    for wav in waveforms:
        items.append(wav)
        if len(items) == batch_items:
            yield flush(items)
            items = []
    if items:
        yield flush(items)


@dataclasses.dataclass
class FitFrames:
    """What k-means is fitted on: `frames` [n, D] (mfcc-kmeans: normalised and stacked,
    D = 26 or 78; mel-rvq: log-mel, D = 80, or 240 with deltas), `seen` frames streamed past
    before sampling, and
    mfcc-kmeans' normalisation `mean`, `std` [D / 2] (0 and 1 under per-utterance CMVN, which
    has already normalised every utterance by its own statistics). mel-rvq: None for raw
    log-mel; under per-utterance CMVN the levels decoding puts back, `mean`, `std` [80]: the
    average over utterances of each band's own mean and sd."""

    frames: torch.Tensor
    seen: int
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None


def fit_frames(
    name: str,
    data_dir: str | Path,
    tasks: Sequence[str] | None,
    splits: Sequence[str],
    max_frames: int,
    seed: int,
    device: str | torch.device = "cpu",
    cmvn: str | None = None,
    deltas: bool = False,
) -> FitFrames:
    """A uniform reservoir sample of at most `max_frames` feature frames of `name` over the
    `audio` of every row of `tasks` (None: those the corpus has) x `splits`, on `device`."""
    from mmllm.corpus.reader import corpus_tasks, corpus_waveforms  # datasets only when fitting

    tasks = corpus_tasks(data_dir) if tasks is None else tuple(tasks)
    cmvn = DEFAULT_CMVN[name] if cmvn is None else cmvn
    dim = mfcc_dim(deltas)
    run_device = torch.device(device)
    stats = None
    if name == "mfcc-kmeans" and cmvn == "corpus":
        stats = FeatureStats(dim)
    elif name == "mel-rvq" and cmvn == "utterance":
        stats = FeatureStats(2 * MEL_N_MELS)  # per utterance: 80 band means, 80 band sds
    seen = 0

    def counted(batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        nonlocal seen
        for batch in batches:
            seen += batch.shape[0]
            yield batch

    waveforms = corpus_waveforms(data_dir, tasks, splits, SAMPLE_RATE)
    batches = _feature_batches(name, waveforms, run_device, stats, cmvn=cmvn, deltas=deltas)
    frames = sample_frames(counted(batches), max_frames, seed).to(run_device)
    if name == "mel-rvq":
        if stats is None:
            return FitFrames(frames, seen)
        levels, _ = stats.mean_std()
        return FitFrames(frames, seen, levels[:MEL_N_MELS], levels[MEL_N_MELS:])
    if stats is not None:
        mean, std = stats.mean_std()
    else:  # already normalised per utterance: identity here
        mean, std = torch.zeros(dim), torch.ones(dim)
    frames = stack_mfcc(frames.reshape(-1, MFCC_STACK, dim), mean, std).squeeze(1)
    return FitFrames(frames, seen, mean, std)


@torch.no_grad()
def fit_offline_tokenizer(
    name: str,
    data_dir: str | Path,
    out_dir: str | Path,
    k: int,
    num_codebooks: int,
    max_frames: int,
    seed: int,
    splits: Sequence[str] = ("train",),
    tasks: Sequence[str] | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 4096,
    max_steps: int = 200,
    progress: bool = True,
    cmvn: str | None = None,
    deltas: bool = False,
) -> Path:
    """Fit `mfcc-kmeans` or `mel-rvq` centroids on a SynthDASB directory -> out_dir.

    Streams the `audio` of every row of `tasks` (default: those the corpus has) x `splits`,
    computes the tokenizer's features, keeps a uniform reservoir sample of at most
    `max_frames` frames, and fits k-means (mel-rvq: `num_codebooks` residual stages, stage j
    on what stages < j left over, seed + j). Writes centroids.safetensors (mfcc-kmeans:
    centroids [k, 26], mfcc_mean [13], mfcc_std [13], or [k, 78], [39], [39] with deltas;
    mel-rvq: codebooks [K, k, 80] ([K, k, 240] with deltas), plus mel_mean [80] and mel_std
    [80] under per-utterance CMVN) and card.json. `batch_size` / `max_steps` are the k-means
    minibatch settings;
    `cmvn` is the tokenizer's `options.cmvn` (None: its default; mfcc-kmeans under
    utterance: the stored mean/std are 0 and 1, since every utterance is already normalised
    by its own statistics) and `deltas` the tokenizer's `options.deltas`.
    """
    if name not in OFFLINE_TOKENIZERS:
        raise ValueError(
            f"fit_offline_tokenizer: unknown offline tokenizer {name!r}; known: {OFFLINE_TOKENIZERS}"
        )
    if name == "mfcc-kmeans" and num_codebooks != 1:
        raise ValueError(f"mfcc-kmeans has one codebook, got num_codebooks={num_codebooks}")
    cmvn = DEFAULT_CMVN[name] if cmvn is None else cmvn
    if num_codebooks < 1:
        raise ValueError(f"{name}: num_codebooks must be >= 1, got {num_codebooks}")
    from mmllm.corpus.reader import corpus_tasks  # datasets only when fitting

    tasks = corpus_tasks(data_dir) if tasks is None else tuple(tasks)
    features = feature_spec(name, cmvn, deltas)  # refuses a cmvn / deltas `name` lacks
    sampled = fit_frames(name, data_dir, tasks, splits, max_frames, seed, device, cmvn, deltas)
    frames = sampled.frames
    fit = {"seed": seed, "batch_size": batch_size, "max_steps": max_steps, "progress": progress}
    tensors: dict[str, torch.Tensor] = {}
    if name == "mfcc-kmeans":
        result = fit_kmeans(frames, k, **fit)
        tensors = {
            "centroids": result.centroids,
            "mfcc_mean": sampled.mean,
            "mfcc_std": sampled.std,
        }
        inertia: list[float] = [result.inertia]
        source = (
            f"13 MFCC (40 mels, 25 ms / 10 ms){' + deltas + delta-deltas' if deltas else ''}, "
            f"mean/var normalised per {cmvn}, 2 frames stacked (50 Hz)"
        )
    else:
        residual = frames
        codebooks, inertia = [], []
        for stage in range(num_codebooks):
            result = fit_kmeans(residual, k, **{**fit, "seed": seed + stage})
            residual = residual - result.centroids[assign(residual, result.centroids)]
            codebooks.append(result.centroids)
            inertia.append(result.inertia)
        tensors = {"codebooks": torch.stack(codebooks)}
        if sampled.mean is not None:
            tensors |= {"mel_mean": sampled.mean, "mel_std": sampled.std}
        source = (
            f"80-bin log-mel (64 ms / 20 ms, 50 Hz){' + deltas + delta-deltas' if deltas else ''}"
            f"{', CMVN per utterance' if cmvn == 'utterance' else ''}, residual k-means"
        )
    card = {
        "tokenizer": name,
        "feature_source": source,
        "features": features,
        "layers": [],
        "k": k,
        "num_codebooks": num_codebooks,
        "data": str(data_dir),
        "splits": list(splits),
        "tasks": list(tasks),
        "num_frames": int(frames.shape[0]),
        "frames_seen": sampled.seen,
        "inertia": inertia,  # per stage: mean squared distance (residual energy after stage j)
        "seed": seed,
        "kmeans": {"batch_size": batch_size, "max_steps": max_steps},
    }
    out_dir = Path(out_dir)
    save_centroids(out_dir, tensors, card)
    return out_dir


def fit_offline_from_config(
    cfg: TokenizerConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    max_frames: int,
    seed: int,
    splits: Sequence[str] = ("train",),
    tasks: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[Path, TokenizerConfig]:
    """fit_offline_tokenizer with k / num_codebooks / device from `cfg` (or the backend's
    defaults) -> (out_dir, the config resolved to use these centroids)."""
    k = cfg.codebook_size or DEFAULT_CODEBOOK_SIZE[cfg.name]
    num_codebooks = cfg.num_codebooks or DEFAULT_NUM_CODEBOOKS[cfg.name]
    out = fit_offline_tokenizer(
        cfg.name,
        data_dir,
        out_dir,
        k,
        num_codebooks,
        max_frames,
        seed,
        splits,
        tasks,
        device=resolve_device(cfg.device),
        progress=progress,
        cmvn=offline_cmvn(cfg),
        deltas=offline_deltas(cfg),
    )
    resolved = dataclasses.replace(
        cfg,
        centroids=str(out),
        codebook_size=k,
        num_codebooks=None if cfg.name == "mfcc-kmeans" else num_codebooks,
    )
    return out, resolved
