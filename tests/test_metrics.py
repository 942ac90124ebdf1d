"""Metrics against values worked out by hand, on short synthetic signals (no downloads)."""

import math
import sys

import numpy as np
import pytest
import torch

from mmllm.audio.features import mfcc
from mmllm.audio.io import resample
from mmllm.corpus.labels import KS_LABELS
from mmllm.eval.metrics import (
    PesqRefused,
    accuracy,
    cer,
    confusions,
    dwer,
    equal_error_rate,
    mcd_from_cepstra,
    mel_cepstral_distortion,
    per_group,
    permutation_invariant_si_snr,
    pesq,
    si_snr,
    si_snr_improvement,
    speaker_similarity,
    stoi,
    wer,
)

SAMPLE_RATE = 16000


def tone(freq_hz: float, seconds: float = 1.0, sample_rate: int = 8000) -> np.ndarray:
    """Unit-amplitude sine; whole periods over whole seconds, so tones of different integer
    frequencies are exactly orthogonal and zero-mean (power 1/2 each)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return np.sin(2 * np.pi * freq_hz * t)


def speech_like(seconds: float, sample_rate: int) -> np.ndarray:
    """A voiced, syllabic signal PESQ's and STOI's voice activity detectors accept: a
    140 Hz harmonic series with a slow pitch glide, gated at 4 syllables per second."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 24))  # harmonics up to ~3.4 kHz
    envelope = np.clip(np.sin(2 * np.pi * 2.0 * t), 0, None) ** 0.5
    envelope *= 0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t + 1)
    return (0.3 * voiced * envelope / np.abs(voiced).max()).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speech_like(2.0, SAMPLE_RATE)


def with_noise(clean: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(clean.size)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (clean + noise).astype(np.float32)


# ---------------------------------------------------------------------- WER / CER / dWER


def test_wer_one_substitution_one_insertion():
    result = wer(["a b c"], ["a x c d"])
    assert result.rate == pytest.approx(2 / 3)
    assert (result.substitutions, result.deletions, result.insertions) == (1, 0, 1)
    assert result.reference_length == 3 and result.errors == 2


def test_wer_is_corpus_level_not_mean_of_sentences():
    # sentence rates 0/3 and 2/2 average to 0.5; the corpus rate is 2 errors / 5 words
    result = wer(["a b c", "d e"], ["a b c", ""])
    assert result.rate == pytest.approx(0.4)
    assert (result.deletions, result.reference_length) == (2, 5)


def test_wer_normalizes_case_punctuation_and_spaces():
    result = wer(["Hello, world!  It's  me."], ["hello world it\u2019s me"])
    assert result.rate == 0.0 and result.reference_length == 4


def test_wer_empty_reference_counts_insertions():
    result = wer(["a", ""], ["a", "b c"])
    assert result.rate == pytest.approx(2.0) and result.insertions == 2


def test_wer_rejects_bad_input():
    with pytest.raises(ValueError, match="pair one to one"):
        wer(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="list of strings"):
        wer("a b", "a b")
    with pytest.raises(ValueError, match="no words"):
        wer(["", "..."], ["a", ""])


def test_cer_counts_characters_and_spaces():
    result = cer(["abc"], ["abd"])
    assert result.rate == pytest.approx(1 / 3) and result.substitutions == 1
    # the missing word break is one deleted character out of 5 ("ab cd")
    result = cer(["ab cd"], ["abcd"])
    assert result.rate == pytest.approx(1 / 5)
    assert (result.deletions, result.reference_length) == (1, 5)


def test_dwer_is_wer_of_asr_transcripts():
    clean_asr = ["the cat sat", "on the mat"]
    output_asr = ["the cat sat", "on a mat"]
    assert dwer(clean_asr, output_asr) == wer(clean_asr, output_asr)
    assert dwer(clean_asr, output_asr).rate == pytest.approx(1 / 6)


# ------------------------------------------------------------------------------ accuracy


def test_accuracy_counts_unparseable_as_wrong():
    labels = ["yes", "no", "up", "_unknown_", "stop"]
    predictions = [" Yes\n", "up", "maybe", "_UNKNOWN_", "unknown"]
    result = accuracy(labels, predictions, KS_LABELS)
    assert (result.correct, result.total, result.unparseable) == (2, 5, 2)
    assert result.accuracy == pytest.approx(0.4)


def test_accuracy_folds_inner_whitespace():
    result = accuracy(["turn on"], ["Turn   ON"], ["turn on", "turn off"])
    assert result.accuracy == 1.0 and result.unparseable == 0


def test_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="not in allowed_labels"):
        accuracy(["maybe"], ["yes"], KS_LABELS)
    with pytest.raises(ValueError, match="zero items"):
        accuracy([], [], KS_LABELS)
    with pytest.raises(ValueError, match="2 labels but 1"):
        accuracy(["yes", "no"], ["yes"], KS_LABELS)


def test_confusions_counts_errors_most_frequent_first():
    labels = ["no", "go", "no", "down", "down", "on", "yes"]
    predictions = ["go", "go", "GO ", "on", "on", "down", "yes"]
    assert confusions(labels, predictions) == [
        ("no", "go", 2),
        ("down", "on", 2),
        ("on", "down", 1),
    ]
    assert confusions(labels, predictions, top=1) == [("no", "go", 2)]
    assert confusions(["yes"], ["yes"]) == []
    with pytest.raises(ValueError, match="2 labels but 1"):
        confusions(["yes", "no"], ["yes"])


def test_per_group_scores_each_groups_rows_worst_first():
    speakers = ["a", "b", "a", "c", "b", "a"]
    labels = ["yes", "no", "up", "up", "no", "go"]
    predictions = ["yes", "go", "up", "up", "no", "no"]
    by_speaker = per_group(
        speakers,
        lambda idx: (
            accuracy([labels[i] for i in idx], [predictions[i] for i in idx], KS_LABELS).accuracy
        ),
    )
    # a: 2 of 3 right; b: 1 of 2; c: 1 of 1; ascending score
    assert list(by_speaker) == ["b", "a", "c"]
    assert by_speaker["a"] == {"rows": 3, "score": pytest.approx(2 / 3)}
    assert by_speaker["b"] == {"rows": 2, "score": 0.5}
    assert by_speaker["c"] == {"rows": 1, "score": 1.0}
    # an error rate: worst is highest
    assert list(per_group(speakers, lambda idx: len(idx) / 10, higher_is_better=False)) == [
        "a",
        "b",
        "c",
    ]
    # ties go by name
    assert list(per_group(["z", "y"], lambda idx: 0.0)) == ["y", "z"]


# ----------------------------------------------------------------------------------- EER


def test_eer_perfect_separation_is_zero():
    assert equal_error_rate([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 0.0


def test_eer_reversed_scores_is_one():
    assert equal_error_rate([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 1.0


def test_eer_four_trials_by_hand():
    # targets 0.9, 0.8, 0.3; non-target 0.5. Sweeping the threshold down, (FAR, FRR) goes
    # (0, 1) -> (0, 2/3) -> (0, 1/3) -> [accept 0.5] (1, 1/3) -> (1, 0). FAR = FRR on the
    # segment (0, 1/3) -> (1, 1/3) at FAR = 1/3.
    scores = [0.9, 0.8, 0.5, 0.3]
    assert equal_error_rate(scores, [1, 1, 0, 1]) == pytest.approx(1 / 3)


def test_eer_tie_between_target_and_nontarget_is_a_diagonal():
    # targets 0.7, 0.5; non-targets 0.5, 0.1. (0, 1) -> (0, 1/2) -> [the tie at 0.5 accepts
    # one of each] (1/2, 0) -> (1, 0): the crossing is midway along the diagonal, 1/4.
    scores = torch.tensor([0.7, 0.5, 0.5, 0.1])
    assert equal_error_rate(scores, torch.tensor([1, 1, 0, 0])) == pytest.approx(0.25)
    assert equal_error_rate([0.3, 0.3], [True, False]) == pytest.approx(0.5)


def test_eer_matches_sklearn_roc_curve():
    roc_curve = pytest.importorskip("sklearn.metrics").roc_curve
    brentq = pytest.importorskip("scipy.optimize").brentq
    rng = np.random.default_rng(0)
    is_target = rng.random(400) < 0.3
    scores = rng.normal(size=400) + 1.5 * is_target
    fpr, tpr, _ = roc_curve(is_target, scores)
    expected = brentq(lambda x: 1.0 - x - np.interp(x, fpr, tpr), 0.0, 1.0)
    assert equal_error_rate(scores, is_target) == pytest.approx(expected, abs=1e-6)


def test_eer_needs_both_kinds_of_trial():
    with pytest.raises(ValueError, match="at least one target"):
        equal_error_rate([0.1, 0.2], [True, True])


# ---------------------------------------------------------------------- speaker similarity


def test_speaker_similarity_mean_cosine():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0]])  # cosines 0 and 1
    assert speaker_similarity(a, b) == pytest.approx(0.5)
    assert speaker_similarity(torch.tensor(a), torch.tensor(-3 * a)) == pytest.approx(-1.0)
    assert speaker_similarity(np.zeros((1, 2)), np.ones((1, 2))) == 0.0
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        speaker_similarity(a, b[:1])


# ------------------------------------------------------------------------------- SI-SNR


def test_si_snr_of_scaled_copy_is_huge():
    signal = tone(200)
    assert si_snr(3 * signal, signal) > 100


def test_si_snr_with_orthogonal_noise_is_power_ratio():
    signal, noise = tone(200), 0.5 * tone(300)  # powers 1/2 and 1/8
    expected = 10 * math.log10(0.5 / 0.125)  # 6.02 dB
    assert si_snr(signal + noise, signal) == pytest.approx(expected, abs=1e-6)
    # scale- and offset-invariant; torch float32 in, same answer
    assert si_snr(0.25 * (signal + noise) + 0.1, signal) == pytest.approx(expected, abs=1e-6)
    estimate = torch.tensor(signal + noise, dtype=torch.float32)
    assert si_snr(estimate, torch.tensor(signal)) == pytest.approx(expected, abs=1e-4)


def test_si_snr_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="samples"):
        si_snr(tone(200)[:-1], tone(200))


def test_si_snr_improvement():
    signal, noise = tone(200), tone(300)
    mixture = signal + noise  # 0 dB
    estimate = signal + 0.5 * noise  # 10 * log10(4) dB
    assert si_snr_improvement(estimate, signal, mixture) == pytest.approx(
        10 * math.log10(4), abs=1e-6
    )
    assert si_snr_improvement(mixture, signal, mixture) == pytest.approx(0.0)


def test_pit_picks_swapped_order():
    first, second, noise = tone(200), tone(300), tone(500)
    references = np.stack([first, second])
    # estimate 0 is the second source at 10*log10(4) dB, estimate 1 the first at 10*log10(16)
    estimates = np.stack([second + 0.5 * noise, first + 0.25 * noise])
    best = permutation_invariant_si_snr(estimates, references)
    assert best.permutation == (1, 0)
    assert best.si_snr == pytest.approx(10 * math.log10(8), abs=1e-6)  # mean of 6.02, 12.04


def test_pit_three_sources():
    references = np.stack([tone(200), tone(300), tone(400)])
    estimates = references[[1, 2, 0]] + 0.1 * tone(700)
    score, permutation = permutation_invariant_si_snr(torch.tensor(estimates), references)
    assert permutation == (2, 0, 1)  # estimates[2] is references[0], ...
    assert score == pytest.approx(10 * math.log10(0.5 / 0.005), abs=1e-6)  # 20 dB each


# ---------------------------------------------------------------------------- STOI / PESQ


def test_stoi_identical_and_degraded(speech):
    assert stoi(speech, speech, SAMPLE_RATE) == pytest.approx(1.0, abs=1e-6)
    noise = 0.1 * np.random.default_rng(2).standard_normal(speech.size)
    unrelated = stoi(speech, noise, SAMPLE_RATE)
    mild, heavy = (stoi(speech, with_noise(speech, snr), SAMPLE_RATE) for snr in (10, -5))
    assert unrelated < 0.5 < heavy < mild < 1.0
    with pytest.raises(ValueError, match="samples"):
        stoi(speech, speech[:-10], SAMPLE_RATE)


def test_pesq_identical_and_noisy(speech):
    assert pesq(speech, speech, SAMPLE_RATE) > 4.0  # wideband maximum is about 4.64
    assert pesq(speech, with_noise(speech, 5), SAMPLE_RATE) < 2.5


def test_pesq_refusal_is_its_own_error(speech):
    """Silence has no utterance: PesqRefused (counted as pesq_failed by the evaluation);
    anything else, e.g. a missing package, is not swallowed."""
    with pytest.raises(PesqRefused, match="No utterances"):
        pesq(np.zeros_like(speech), speech, SAMPLE_RATE)


def test_pesq_narrowband_and_resampled(speech):
    narrowband = resample(speech, SAMPLE_RATE, 8000)
    assert pesq(narrowband, narrowband, 8000) > 4.0
    # 24 kHz is not a PESQ rate: resampled to 16 kHz and scored wideband
    at_24k = resample(speech, SAMPLE_RATE, 24000)
    assert pesq(at_24k, at_24k, 24000) > 4.0


# ------------------------------------------------------------------ mel-cepstral distortion


def test_mcd_from_cepstra_by_hand():
    # per frame (10 / ln 10) * sqrt(2 * sum of squared differences)
    two_frames = mcd_from_cepstra(np.zeros((2, 2)), np.array([[1.0, 0.0], [2.0, 0.0]]))
    assert two_frames == pytest.approx(10 / math.log(10) * (math.sqrt(2) + math.sqrt(8)) / 2)
    assert two_frames == pytest.approx(9.2128, abs=1e-4)
    assert mcd_from_cepstra(np.array([[3.0, 4.0]]), np.zeros((1, 2))) == pytest.approx(
        10 / math.log(10) * math.sqrt(50)  # 30.709 dB
    )
    with pytest.raises(ValueError, match=r"\[T, D\]"):
        mcd_from_cepstra(np.zeros((2, 3)), np.zeros((2, 2)))


def test_mcd_of_signals(speech):
    assert mel_cepstral_distortion(speech, speech, SAMPLE_RATE) == 0.0
    # a gain adds a constant to every log-mel bin (none at the floor: broadband noise fills
    # the bins above the harmonics): only c0 moves, and c0 is left out
    broadband = with_noise(speech, 30)
    assert mel_cepstral_distortion(broadband, 0.5 * broadband, SAMPLE_RATE) == pytest.approx(
        0, abs=1e-6
    )
    mild, heavy = (
        mel_cepstral_distortion(speech, with_noise(speech, snr), SAMPLE_RATE) for snr in (20, 0)
    )
    assert 0 < mild < heavy
    with pytest.raises(ValueError, match="samples"):
        mel_cepstral_distortion(speech, speech[:-10], SAMPLE_RATE)


def test_dtw_path_by_hand_and_mcd_of_a_time_warped_copy(speech):
    from mmllm.audio.io import resample
    from mmllm.eval.metrics import dtw_path

    rows, cols = dtw_path(np.array([[0.0], [1], [3]]), np.array([[0.0], [3]]))
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [0, 0, 1]
    rows, cols = dtw_path(np.array([[0.0], [5]]), np.array([[0.0], [0], [5], [5]]))
    assert rows.tolist() == [0, 0, 1, 1] and cols.tolist() == [0, 1, 2, 3]
    # the same speech 15% slower: a length mismatch without DTW, a small distance with it,
    # far below the distance to noisy speech aligned the same way
    slower = resample(speech, SAMPLE_RATE, round(SAMPLE_RATE * 1.15))
    warped = mel_cepstral_distortion(speech, slower, SAMPLE_RATE, align="dtw")
    noisy = mel_cepstral_distortion(speech, with_noise(speech, 0), SAMPLE_RATE, align="dtw")
    assert mel_cepstral_distortion(speech, speech, SAMPLE_RATE, align="dtw") == 0.0
    assert 0 < warped < 0.5 * noisy


def test_mcd_is_scaled_mfcc_distance(speech):
    # the signal-level MCD is mcd_from_cepstra of mmllm.audio.mfcc (25 ms / 10 ms, 40 mels)
    # scaled to log-amplitude cepstra (/ (2 sqrt(2 x 40))), c0 dropped
    noisy = with_noise(speech, 10)
    cepstra = [
        mfcc(torch.from_numpy(x).double(), SAMPLE_RATE, n_fft=400, hop_length=160).T[:, 1:]
        / (2 * math.sqrt(80))
        for x in (speech, noisy)
    ]
    expected = mcd_from_cepstra(*cepstra)
    got = mel_cepstral_distortion(speech, noisy, SAMPLE_RATE, dynamic_range_db=None)
    assert got == pytest.approx(expected, rel=1e-9)
    assert 0.5 < got < 20  # the usual MCD scale, not 10-20x it


def test_mcd_leaves_out_silent_reference_frames(speech):
    half = speech.size // 2
    reference = speech.copy()
    reference[half:] = 0.0
    estimate = reference.copy()
    # noise only where every 25 ms window of the reference is digital silence
    estimate[half + 400 :] += 1e-3 * np.random.default_rng(3).standard_normal(
        speech.size - half - 400
    )
    assert mel_cepstral_distortion(reference, estimate, SAMPLE_RATE) == 0.0
    assert mel_cepstral_distortion(reference, estimate, SAMPLE_RATE, dynamic_range_db=None) > 0.1


@pytest.mark.parametrize(("metric", "package"), [(stoi, "pystoi"), (pesq, "pesq")])
def test_missing_package_names_it(monkeypatch, metric, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(ImportError, match=f"`{package}` package"):
        metric(np.ones(8000), np.ones(8000), SAMPLE_RATE)
