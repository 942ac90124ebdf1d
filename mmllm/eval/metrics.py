"""Metrics of the DASB tasks, computed from what prompted generation produces.

| task                                   | metric                                          |
|----------------------------------------|-------------------------------------------------|
| ASR                                    | `wer`, `cer` (corpus level, with edit counts)   |
| keyword, intent, emotion, speaker ID   | `accuracy` (unparseable outputs counted apart)  |
| breakdowns of any of them              | `per_group` (per speaker, per label), `confusions` |
| speaker verification                   | `equal_error_rate`                              |
| enhancement                            | `si_snr(_improvement)`, `stoi`, `pesq`, `dwer`  |
| resynthesis (vocoders)                 | `stoi`, `mel_cepstral_distortion`               |
| separation                             | `permutation_invariant_si_snr`, SI-SNRi, `dwer` |
| TTS                                    | `dwer`, `speaker_similarity`                    |

Text: every transcript goes through ONE normalizer, `mmllm.text.normalize.normalize_text`
(lowercase, accents and typographic apostrophes folded, punctuation/digits/hyphens turned
into word breaks, whitespace collapsed). It is the rule SynthDASB transcripts are written in,
so references are unchanged by it and a model output is mapped onto the same rule. Digits
are dropped, not spelled out: SynthDASB and LibriSpeech references spell numbers out, so a
digit in an output is an error either way (a corpus whose references hold digits needs
them spelled out before scoring). Labels are NOT put through it (they contain underscores,
e.g. "_unknown_"); `accuracy` only folds case and whitespace.

Signals: 1D float arrays `[T]`, numpy or torch (any device, any float dtype); every signal
metric computes in float64 numpy and returns a Python float. STOI and PESQ come from the
`pystoi` and `pesq` packages, imported only when called (PESQ builds from source; a machine
without it still imports this module and gets an ImportError naming the package).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import jiwer
import numpy as np

from mmllm.text.normalize import normalize_text

if TYPE_CHECKING:
    import torch

    Signal = np.ndarray | torch.Tensor
else:
    Signal = np.ndarray


# Added to both energies of a ratio so a perfect estimate gives a large finite SI-SNR
# (about 10 * log10(signal energy / EPS)) instead of inf, and a silent one no NaN.
EPS = 1e-8


# PESQ (ITU-T P.862) is defined at these rates only: 8 kHz narrowband, 16 kHz wideband.
PESQ_MODES = {8000: "nb", 16000: "wb"}


@dataclass(frozen=True)
class ErrorRate:
    """Corpus-level edit-distance rate: (S + D + I) / N.

    `reference_length` (N) counts words for WER and characters for CER, over all
    references after normalization; the rate can exceed 1 when outputs insert a lot.
    """

    rate: float
    substitutions: int
    deletions: int
    insertions: int
    reference_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def _normalized_pairs(
    references: Sequence[str], hypotheses: Sequence[str]
) -> tuple[list[str], list[str]]:
    # A bare string would be iterated as characters and scored without complaint.
    for name, texts in (("references", references), ("hypotheses", hypotheses)):
        if isinstance(texts, str):
            raise TypeError(f"{name} must be a list of strings, not one string")
    if len(references) != len(hypotheses):
        raise ValueError(
            f"got {len(references)} references but {len(hypotheses)} hypotheses; "
            "they must pair one to one"
        )
    return [normalize_text(t) for t in references], [normalize_text(t) for t in hypotheses]


def _error_rate(output: jiwer.WordOutput | jiwer.CharacterOutput, unit: str) -> ErrorRate:
    reference_length = output.hits + output.substitutions + output.deletions
    if reference_length == 0:
        raise ValueError(f"references hold no {unit} after normalization; the rate is undefined")
    errors = output.substitutions + output.deletions + output.insertions
    return ErrorRate(
        rate=errors / reference_length,
        substitutions=output.substitutions,
        deletions=output.deletions,
        insertions=output.insertions,
        reference_length=reference_length,
    )


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRate:
    """Word error rate over a corpus: total word edits / total reference words.

    references, hypotheses: [N] strings, paired by position; both are normalized with
    `normalize_text` first. An empty reference is allowed (its hypothesis words count as
    insertions; jiwer >= 4 handles it, 3.x raised) as long as the corpus has at least one
    reference word. Example:
    wer(["a b c"], ["a x c d"]) -> rate 2/3 (1 substitution, 1 insertion, 3 words).
    """
    refs, hyps = _normalized_pairs(references, hypotheses)
    return _error_rate(jiwer.process_words(refs, hyps), "words")


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRate:
    """Character error rate over a corpus: total character edits / total reference characters.

    Same inputs and normalization as `wer`. The single spaces between words count as
    characters (jiwer's convention), so a missing word break is one deletion.
    """
    refs, hyps = _normalized_pairs(references, hypotheses)
    return _error_rate(jiwer.process_characters(refs, hyps), "characters")


def dwer(reference_transcripts: Sequence[str], output_transcripts: Sequence[str]) -> ErrorRate:
    """Differential WER (dWER) of generated or processed speech.

    Run one ASR system on the clean reference audio and on the system's output audio
    (enhanced, separated, resynthesized or TTS speech), then score the output transcripts
    against the reference transcripts: [N] strings each. Because the "truth" is the ASR's own
    reading of the clean audio, the ASR's errors on clean speech cancel and dWER measures
    only the intelligibility lost by the system. This is `wer` on those two lists.
    """
    return wer(reference_transcripts, output_transcripts)


@dataclass(frozen=True)
class Accuracy:
    """Classification accuracy from generated label strings.

    `unparseable` counts predictions that are not an allowed label; they are also wrong,
    so they are inside `total - correct`.
    """

    accuracy: float
    correct: int
    total: int
    unparseable: int


def _normalize_label(label: str) -> str:
    return " ".join(label.split()).lower()


def accuracy(
    labels: Sequence[str], predictions: Sequence[str], allowed_labels: Sequence[str]
) -> Accuracy:
    """Accuracy of generated labels: labels, predictions [N] strings; allowed_labels [C].

    Case and whitespace are folded in all three ("  Yes\\n" matches "yes"); nothing else is,
    so "_unknown_" stays distinct from "unknown". A prediction outside `allowed_labels` is
    wrong and counted in `unparseable`. A reference label outside `allowed_labels` is a data
    bug and raises ValueError, as does an empty list.
    """
    if isinstance(labels, str) or isinstance(predictions, str):
        raise TypeError("labels and predictions must be lists of strings, not one string")
    if len(labels) != len(predictions):
        raise ValueError(f"got {len(labels)} labels but {len(predictions)} predictions")
    if not labels:
        raise ValueError("accuracy of zero items is undefined")
    allowed = {_normalize_label(label) for label in allowed_labels}
    correct = unparseable = 0
    for label, prediction in zip(labels, predictions, strict=True):
        label, prediction = _normalize_label(label), _normalize_label(prediction)
        if label not in allowed:
            raise ValueError(f"reference label {label!r} is not in allowed_labels")
        if prediction not in allowed:
            unparseable += 1
        elif prediction == label:
            correct += 1
    return Accuracy(correct / len(labels), correct, len(labels), unparseable)


def confusions(
    labels: Sequence[str], predictions: Sequence[str], top: int = 10
) -> list[tuple[str, str, int]]:
    """The `top` most frequent errors as (reference, prediction, count), most frequent first
    (ties in order of first appearance); labels, predictions [N], folded as in `accuracy`.
    Example: confusions(["no", "go", "no"], ["go", "go", "go"]) -> [("no", "go", 2)]."""
    if len(labels) != len(predictions):
        raise ValueError(f"got {len(labels)} labels but {len(predictions)} predictions")
    folded = zip(map(_normalize_label, labels), map(_normalize_label, predictions), strict=True)
    pairs = Counter((label, prediction) for label, prediction in folded if label != prediction)
    return [(label, prediction, count) for (label, prediction), count in pairs.most_common(top)]


def per_group(
    groups: Sequence[str], score: Callable[[list[int]], float], higher_is_better: bool = True
) -> dict[str, dict[str, float]]:
    """A metric over each group's rows: groups [N] holds one key per row, `score(indices)`
    computes the metric over the rows at those indices (e.g. the accuracy of one speaker's
    answers). Returns {group: {"rows": count, "score": value}}, worst group first (lowest
    score, or highest for an error rate with higher_is_better=False), ties by group name.
    Example: per_group(["a", "b", "a"], lambda idx: len(idx)) ->
    {"b": {"rows": 1, "score": 1}, "a": {"rows": 2, "score": 2}}."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    scored = {group: score(indices) for group, indices in members.items()}
    sign = 1 if higher_is_better else -1
    order = sorted(scored, key=lambda group: (sign * scored[group], group))
    return {group: {"rows": len(members[group]), "score": scored[group]} for group in order}


def equal_error_rate(scores: Signal, is_target: Signal) -> float:
    """Equal error rate of speaker verification, in [0, 1].

    scores: [N] real, higher = more likely the same speaker; is_target: [N] bool (True for a
    same-speaker trial). A trial is accepted when its score >= threshold. Sweeping the
    threshold down through every distinct score traces the ROC from (FAR 0, FRR 1) to
    (FAR 1, FRR 0), where FAR = accepted non-targets / non-targets and FRR = rejected targets
    / targets. The EER is where FAR = FRR on the piecewise-linear ROC through those points
    (the same as the usual `brentq` over sklearn's `roc_curve`). Tied scores move together,
    so a tie between a target and a non-target is a diagonal step, never an optimistic one.
    """
    scores_np = _as_float64(scores, "scores").reshape(-1)
    target = _as_float64(is_target, "is_target").reshape(-1) != 0
    if scores_np.shape != target.shape:
        raise ValueError(f"scores {scores_np.shape} and is_target {target.shape} differ")
    num_targets, num_nontargets = int(target.sum()), int((~target).sum())
    if num_targets == 0 or num_nontargets == 0:
        raise ValueError("EER needs at least one target and one non-target trial")
    if not np.isfinite(scores_np).all():
        raise ValueError("scores contain NaN or Inf")

    order = np.argsort(-scores_np, kind="stable")
    sorted_scores, sorted_target = scores_np[order], target[order]
    # Index of the last trial of each run of equal scores: thresholds at distinct scores.
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    accepted_targets = np.cumsum(sorted_target)[last_of_tie]
    accepted_nontargets = np.cumsum(~sorted_target)[last_of_tie]
    far = np.r_[0.0, accepted_nontargets / num_nontargets]
    frr = np.r_[1.0, 1.0 - accepted_targets / num_targets]

    gap = frr - far  # starts at 1, ends at -1 and never increases along the sweep
    crossing = int(np.argmax(gap <= 0))  # first point at or past FAR = FRR; index >= 1
    before, after = gap[crossing - 1], gap[crossing]
    fraction = before / (before - after)
    return float(far[crossing - 1] + fraction * (far[crossing] - far[crossing - 1]))


def speaker_similarity(embeddings_a: Signal, embeddings_b: Signal) -> float:
    """Mean cosine similarity of paired speaker embeddings, in [-1, 1].

    embeddings_a, embeddings_b: [N, D] (row i of one pairs with row i of the other), e.g.
    a speaker encoder applied to TTS output and to the target speaker's reference audio.
    A zero row gives similarity 0 (norms are clamped at EPS, as torch's cosine_similarity).
    """
    a, b = _as_float64(embeddings_a, "embeddings_a"), _as_float64(embeddings_b, "embeddings_b")
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"need two non-empty [N, D] arrays of one shape, got {a.shape}, {b.shape}")
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), EPS)
    return float(np.mean(np.sum(a * b, axis=1) / norms))


def _as_float64(x: Signal, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor: any device, any dtype (bf16 has no numpy view)
        x = x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}") from err


def _signal(x: Signal, name: str) -> np.ndarray:
    wav = _as_float64(x, name)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"{name} must be a non-empty 1D signal [T], got shape {wav.shape}")
    return wav


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    # No silent trimming: a length mismatch usually means misaligned audio, and trimming
    # would score it as if it were aligned. Callers trim codec padding themselves.
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has {a.size} samples but {name_b} has {b.size}")


def si_snr(estimate: Signal, reference: Signal) -> float:
    """Scale-invariant signal-to-noise ratio in dB (Le Roux et al., 2019, "SDR - half-baked
    or well done?").

    estimate, reference: [T] of the same length. Both are made zero-mean; the estimate is
    split into its projection on the reference (target = <est, ref> / ||ref||^2 * ref) and
    the rest (noise = est - target); SI-SNR = 10 * log10(||target||^2 / ||noise||^2).
    Rescaling the estimate does not change it. EPS in both energies keeps a perfect estimate
    finite (well above 100 dB for unit-level signals).
    """
    est, ref = _signal(estimate, "estimate"), _signal(reference, "reference")
    _same_length(est, ref, "estimate", "reference")
    est, ref = est - est.mean(), ref - ref.mean()
    target = (np.dot(est, ref) / (np.dot(ref, ref) + EPS)) * ref
    noise = est - target
    return float(10.0 * np.log10((np.dot(target, target) + EPS) / (np.dot(noise, noise) + EPS)))


def si_snr_improvement(estimate: Signal, reference: Signal, mixture: Signal) -> float:
    """SI-SNRi in dB: si_snr(estimate, reference) - si_snr(mixture, reference).

    estimate, reference, mixture: [T]. How much the system improved over passing the noisy
    or mixed input through unchanged; 0 for the identity system.
    """
    return si_snr(estimate, reference) - si_snr(mixture, reference)


class PermutationSiSnr(NamedTuple):
    """Best assignment of separated sources: estimates[permutation[j]] pairs with
    references[j]; `si_snr` is the mean SI-SNR (dB) over the S pairs."""

    si_snr: float
    permutation: tuple[int, ...]


def permutation_invariant_si_snr(estimates: Signal, references: Signal) -> PermutationSiSnr:
    """Permutation-invariant SI-SNR for source separation.

    estimates, references: [S, T]. A separator outputs sources in no particular order, so
    every one of the S! assignments is scored and the best mean SI-SNR is kept (S is 2 or 3
    in DASB, so the exhaustive search costs S * S SI-SNRs and S! sums).
    """
    est, ref = _as_float64(estimates, "estimates"), _as_float64(references, "references")
    if est.ndim != 2 or est.shape != ref.shape or est.shape[0] == 0:
        raise ValueError(
            f"need estimates and references [S, T] of one shape, got {est.shape}, {ref.shape}"
        )
    num_sources = est.shape[0]
    # pair_scores[i, j] = SI-SNR of estimate i against reference j
    pair_scores = np.array(
        [[si_snr(est[i], ref[j]) for j in range(num_sources)] for i in range(num_sources)]
    )
    best = max(
        itertools.permutations(range(num_sources)),
        key=lambda perm: pair_scores[list(perm), range(num_sources)].sum(),
    )
    return PermutationSiSnr(float(pair_scores[list(best), range(num_sources)].mean()), best)


def stoi(clean: Signal, processed: Signal, sample_rate: int, extended: bool = False) -> float:
    """Short-time objective intelligibility (Taal et al., 2011), about 0..1, higher is better.

    clean, processed: [T] of the same length at `sample_rate` Hz. Computed by `pystoi`, which
    resamples to 10 kHz and drops silent frames itself. `extended=True` gives ESTOI. Needs
    a few hundred ms of non-silent audio (30 frames of 25.6 ms after silence removal).
    """
    try:
        from pystoi import stoi as pystoi_stoi
    except ImportError as err:
        raise ImportError("stoi() needs the `pystoi` package: pip install pystoi") from err
    ref, deg = _signal(clean, "clean"), _signal(processed, "processed")
    _same_length(ref, deg, "clean", "processed")
    return float(pystoi_stoi(ref, deg, int(sample_rate), extended=extended))


class PesqRefused(ValueError):
    """PESQ declined a pair of signals (no utterance found, too short): a counted outcome,
    not an error of the evaluation. A missing `pesq` package is an ImportError instead."""


def pesq(clean: Signal, processed: Signal, sample_rate: int) -> float:
    """Perceptual evaluation of speech quality (ITU-T P.862), MOS-LQO about 1..4.6.

    clean, processed: [T] at `sample_rate` Hz (lengths may differ: PESQ aligns them itself).
    PESQ is defined at 16 kHz (wideband mode, P.862.2) and 8 kHz (narrowband mode) only:
    8 kHz input is scored narrowband, 16 kHz wideband, and any other rate is first resampled
    to 16 kHz with `mmllm.audio.resample` (soxr) and scored wideband. Computed by the `pesq`
    package; raises PesqRefused when the pesq package declines the pair (no speech in the clean
    signal, too short).
    """
    try:
        from pesq import pesq as pesq_score
    except ImportError as err:
        raise ImportError(
            "pesq() needs the `pesq` package (built from source, needs a C compiler): "
            "pip install pesq"
        ) from err
    from mmllm.audio.io import resample

    ref, deg = _signal(clean, "clean"), _signal(processed, "processed")
    sample_rate = int(sample_rate)
    if sample_rate not in PESQ_MODES:
        ref, deg = resample(ref, sample_rate, 16000), resample(deg, sample_rate, 16000)
        sample_rate = 16000
    from pesq import PesqError

    try:
        return float(pesq_score(sample_rate, ref, deg, PESQ_MODES[sample_rate]))
    except PesqError as err:  # e.g. NoUtterancesError: a signal it finds no speech in
        raise PesqRefused(str(err)) from err


def mcd_from_cepstra(reference: Signal, estimate: Signal) -> float:
    """Mel-cepstral distortion in dB of aligned cepstra [T, D] (coefficients to compare only,
    c0 already removed): mean over frames t of (10 / ln 10) * sqrt(2 * sum_d (c_td - c'_td)^2).

    Example: reference all zero, estimate frame 0 = [1, 0], frame 1 = [2, 0] ->
    (10 / ln 10) * (sqrt(2) + sqrt(8)) / 2 = 9.2128 dB.
    """
    ref, est = _as_float64(reference, "reference"), _as_float64(estimate, "estimate")
    if ref.ndim != 2 or ref.shape != est.shape or ref.shape[0] == 0:
        raise ValueError(
            f"need reference and estimate cepstra [T, D] of one shape, got {ref.shape}, {est.shape}"
        )
    per_frame = np.sqrt(2.0 * np.square(ref - est).sum(axis=1))
    return float(10.0 / np.log(10.0) * per_frame.mean())


def mel_cepstral_distortion(
    reference: Signal,
    estimate: Signal,
    sample_rate: int,
    n_mfcc: int = 13,
    dynamic_range_db: float | None = 40.0,
    align: str = "none",
) -> float:
    """MFCC-based mel-cepstral distortion (Kubichek 1993) in dB; 0 for identical spectral
    envelopes, lower is better.

    reference, estimate: [T] each. align="none": of the same length, time-aligned
    (resynthesis, enhancement); align="dtw": any lengths (TTS against a rendering of the same
    text), frames paired along the dynamic-time-warping path of least cepstral distance
    (`dtw_path`) and MCD averaged over the path. Per 10 ms frame (25 ms Hann window), the
    natural-log power of 40 mel bands goes through the orthonormal DCT-II: `n_mfcc` MFCCs m
    (as mmllm.audio.mfcc). They are scaled to log-amplitude cepstra, the convention MCD is
    defined in (ln|H(w)| = c0 + 2 sum_d c_d cos(d w) over the mel axis): c = m / (2 sqrt(2 x
    40)), the 2 taking power to amplitude and sqrt(2 x 40) the DCT's normalisation. c0, the
    frame's level, is left out (a gain alone scores 0); then `mcd_from_cepstra` over c1..c12:

        MCD = mean_t (10 / ln 10) * sqrt(2 * sum_{d=1}^{12} (c_td - c'_td)^2)

    Frames more than `dynamic_range_db` below their signal's loudest frame (silence; the log
    of near-silence is noise) are left out, as STOI does (aligned: the reference's frames
    decide for both); None keeps all. MFCCs are not SPTK mel-cepstra, so values are on the
    usual scale (a few dB) but compare systems scored here rather than published figures.
    """
    import torch

    from mmllm.audio.features import dct_matrix, log_mel

    if align not in ("none", "dtw"):
        raise ValueError(f"align must be 'none' or 'dtw', got {align!r}")
    ref, est = _signal(reference, "reference"), _signal(estimate, "estimate")
    if align == "none":
        _same_length(ref, est, "reference", "estimate")
    sample_rate = int(sample_rate)
    settings = {"n_fft": round(0.025 * sample_rate), "hop_length": round(0.010 * sample_rate)}
    n_mels = 40
    logs = [
        log_mel(torch.from_numpy(x), sample_rate, n_mels=n_mels, **settings).T for x in (ref, est)
    ]  # [frames, 40] natural-log mel power each
    basis = dct_matrix(n_mels, n_mfcc).double() / (2.0 * np.sqrt(2.0 * n_mels))
    ref_cep, est_cep = (lm @ basis for lm in logs)

    def loud(log_power: torch.Tensor) -> torch.Tensor:
        if dynamic_range_db is None:
            return torch.ones(log_power.shape[0], dtype=torch.bool)
        level_db = 10.0 / np.log(10.0) * torch.logsumexp(log_power, dim=1)
        return level_db >= level_db.max() - dynamic_range_db

    if align == "none":
        keep = loud(logs[0])
        return mcd_from_cepstra(ref_cep[keep, 1:], est_cep[keep, 1:])
    ref_cep = ref_cep[loud(logs[0]), 1:].numpy()
    est_cep = est_cep[loud(logs[1]), 1:].numpy()
    rows, cols = dtw_path(ref_cep, est_cep)
    return mcd_from_cepstra(ref_cep[rows], est_cep[cols])


def dtw_path(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic time warping of sequences a [N, D] and b [M, D] under Euclidean frame
    distance, steps (1, 0), (0, 1), (1, 1), from (0, 0) to (N - 1, M - 1) -> the path's frame
    indices (rows into a, cols into b), in order.

    Example: a = [[0], [1], [3]], b = [[0], [3]] -> rows [0, 1, 2], cols [0, 0, 1] (cost
    0 + 1 + 0: a's frame 1 is nearer b's frame 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(
            f"dtw_path: need [N, D] and [M, D] with N, M >= 1, got {a.shape}, {b.shape}"
        )
    distance = np.sqrt(np.square(a[:, None, :] - b[None, :, :]).sum(axis=2))  # [N, M]
    n, m = distance.shape
    cost = np.full((n + 1, m + 1), np.inf)
    cost[0, 0] = 0.0
    for i in range(1, n + 1):  # row by row; within a row the (0, 1) step is a running min
        diagonal_or_up = np.minimum(cost[i - 1, :-1], cost[i - 1, 1:]) + distance[i - 1]
        row = cost[i]
        for j in range(1, m + 1):
            row[j] = min(diagonal_or_up[j - 1], row[j - 1] + distance[i - 1, j - 1])
    i, j, rows, cols = n, m, [], []
    while i > 0 and j > 0:  # back from the end along the cheapest predecessor
        rows.append(i - 1)
        cols.append(j - 1)
        step = int(np.argmin([cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]]))
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return np.array(rows[::-1]), np.array(cols[::-1])
