"""Input-audio augmentation: the speed warp and time masks on hand-sized frames, seeded
draws, config errors that name the key."""

import numpy as np
import pytest

from mmllm.config import ConfigError, load_config
from mmllm.data.augment import (
    AudioAugment,
    augment_frames,
    augmented_lookup,
    mask_positions,
    resample_frames,
    row_rng,
    time_mask,
)
from mmllm.pretrain.config import PretrainConfig


def test_resample_frames_by_hand():
    frames = np.arange(10)[None, :]  # [1, 10]
    assert resample_frames(frames, 2.0).tolist() == [[0, 2, 4, 6, 8]]
    assert resample_frames(frames, 0.5).tolist() == [[i // 2 for i in range(20)]]
    assert resample_frames(frames, 1.0).tolist() == frames.tolist()
    assert resample_frames(frames, 1.25).tolist() == [[0, 1, 2, 3, 5, 6, 7, 8]]
    assert resample_frames(np.arange(3)[None, :], 10.0).tolist() == [[0]]  # never empty


def test_time_mask_codes_and_features_by_hand():
    codes = np.zeros((2, 6), dtype=np.int64)
    mask = np.array([False, True, True, False, False, True])
    out = time_mask(codes, mask, np.random.default_rng(0), codebook_size=4)
    assert (out[:, ~mask] == 0).all() and ((out >= 0) & (out < 4)).all()
    assert out[:, mask].any()  # random codes, not left alone
    features = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 4.0, 8.0, 8.0]], dtype=np.float32)
    masked = time_mask(
        features, np.array([True, False, False, True]), np.random.default_rng(0), None
    )
    assert masked.tolist() == [[1.5, 1.0, 2.0, 1.5], [6.0, 4.0, 8.0, 6.0]]  # the mean frame
    assert features[0, 0] == 0.0  # the cached array is never written


def test_masks_cover_about_the_ratio():
    augment = AudioAugment(mask_ratio=0.1, mask_span=5)
    covered = mask_positions(20_000, augment, np.random.default_rng(1)).mean()
    assert 0.08 < covered < 0.105  # overlapping spans cover a little less than the ratio
    assert not mask_positions(100, AudioAugment(), np.random.default_rng(1)).any()


def test_draws_are_seeded_per_row_and_key():
    cached = {"a": np.arange(40).reshape(1, 40), "b": np.arange(40).reshape(1, 40)}
    augment = AudioAugment(speed=[0.8, 1.2], mask_ratio=0.2, mask_span=3)
    first = augmented_lookup(cached.__getitem__, augment, seed=7, codebook_size=50)
    again = augmented_lookup(cached.__getitem__, augment, seed=7, codebook_size=50)
    other = augmented_lookup(cached.__getitem__, augment, seed="7.1", codebook_size=50)
    assert np.array_equal(first("a"), again("a"))
    assert not np.array_equal(first("a"), other("a"))
    assert not np.array_equal(first("a"), first("b"))
    lengths = {
        augment_frames(cached["a"], augment, row_rng(s, "a"), 50).shape[1] for s in range(50)
    }
    assert min(lengths) >= round(40 / 1.2) and max(lengths) <= round(40 / 0.8) and len(lengths) > 3


@pytest.mark.parametrize(
    "value, key",
    [
        ("{speed: [1.2, 0.9]}", "speed"),
        ("{speed: [1.0]}", "speed"),
        ("{mask_ratio: 1.5}", "mask_ratio"),
        ("{mask_span: 0}", "mask_span"),
        ("{mask_prob: 0.1}", "mask_prob"),
    ],
)
def test_bad_augment_config_names_the_key(value, key):
    with pytest.raises(ConfigError, match=key):
        load_config(PretrainConfig, None, [f"data.augment={value}"])
