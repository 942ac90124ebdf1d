"""Token statistics agree with hand-computed cases."""

import math

import numpy as np
import pytest

from mmllm.data.token_stats import codebook_statistics, frame_words


def test_frame_words_uses_frame_centres():
    words = [
        {"word": "hi", "start": 0.0, "end": 0.05},
        {"word": "there", "start": 0.06, "end": 0.1},
    ]
    # 50 Hz frames: centres at 0.01, 0.03, 0.05, 0.07, 0.09, 0.11
    assert frame_words(words, 6, 50.0) == ["hi", "hi", "hi", "there", "there", None]


def test_codebook_statistics_hand_case():
    codes = np.array([0, 0, 1, 1, 1, 3])
    labels = ["a", "a", "a", "b", "b", None]
    stats = codebook_statistics(codes, codebook_size=4, labels=labels)
    assert stats["usage"] == 0.75  # codes 0, 1, 3 of 4
    probs = np.array([2, 3, 1]) / 6
    assert stats["perplexity"] == pytest.approx(math.exp(-(probs * np.log(probs)).sum()))
    # code 0: {a: 2} -> 2; code 1: {a: 1, b: 2} -> 2; frames in words: 5
    assert stats["purity"] == pytest.approx(4 / 5)
    h1 = -(1 / 3 * math.log2(1 / 3) + 2 / 3 * math.log2(2 / 3))
    assert stats["word_entropy_bits"] == pytest.approx(3 / 5 * h1)
    assert stats["frames_in_words"] == 5
