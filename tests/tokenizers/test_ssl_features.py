"""Continuous SSL layer features (hubert-, wavlm-, wav2vec2-features): the continuous baseline's
input, on tiny random-init models of the real transformers classes saved with save_pretrained."""

from pathlib import Path

import pytest
import torch
from test_ssl import waveforms
from tiny_models import tiny_ssl_model

from mmllm.config import load_config
from mmllm.tokenizers.backends.features import utterance_cmvn
from mmllm.tokenizers.backends.ssl import SSLFeatures
from mmllm.tokenizers.base import TokenizerConfig, pad_batch
from mmllm.tokenizers.registry import build_tokenizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tokenizers"
HIDDEN = 32  # tiny_ssl_model's hidden size


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = {}
    for kind in ("hubert", "wavlm"):
        folder = tmp_path_factory.mktemp(kind)
        tiny_ssl_model(kind).save_pretrained(folder)
        out[kind] = str(folder)
    return out


def features_cfg(kind, weights, **fields):
    return TokenizerConfig(
        name=f"{kind}-features", weights=weights[kind], **{"layers": [1, 3], **fields}
    )


def test_features_are_the_chosen_layers_concatenated(weights):
    cfg = features_cfg("hubert", weights)
    tokenizer = build_tokenizer(cfg)
    wav, lengths = pad_batch(waveforms())
    features, frames = tokenizer.encode(wav, lengths)
    layers, expected_frames = SSLFeatures(cfg)(wav, lengths)  # 2 x [B, F, 32]
    assert features.shape == (3, 2 * HIDDEN, int(frames.max()))
    assert frames.tolist() == expected_frames.tolist() == tokenizer.frame_lengths(lengths).tolist()
    # layer 1 fills dims 0-31, layer 3 dims 32-63, frames on the last axis
    torch.testing.assert_close(features[:, :HIDDEN], layers[0].transpose(1, 2))
    torch.testing.assert_close(features[:, HIDDEN:], layers[1].transpose(1, 2))
    shortest = int(frames.min())
    assert torch.all(features[frames.argmin(), :, shortest:] == 0)  # padding frames are zero
    card = tokenizer.describe()
    assert card["continuous"] and card["feature_layers"] == [1, 3] and card["layer_dim"] == HIDDEN
    assert tokenizer.num_codebooks == 2 * HIDDEN and tokenizer.frame_rate_hz == 50.0
    assert tokenizer.bitrate_bps == 2 * HIDDEN * 16 * 50  # float16 as cached


def test_batched_features_equal_one_by_one(weights):
    tokenizer = build_tokenizer(features_cfg("wavlm", weights, layers=[0, 2]))
    items = waveforms(seconds=[0.9, 0.4, 1.3], seed=3)
    batched, frames = tokenizer.encode(*pad_batch(items))
    for i, item in enumerate(items):
        alone, count = tokenizer.encode(item[None], torch.tensor([len(item)]))
        assert int(count[0]) == int(frames[i])
        torch.testing.assert_close(batched[i, :, : frames[i]], alone[0], atol=1e-4, rtol=1e-4)


def test_cmvn_is_off_by_default_and_per_utterance_when_asked(weights):
    wav, lengths = pad_batch(waveforms())
    raw, frames = build_tokenizer(features_cfg("hubert", weights)).encode(wav, lengths)
    normalised, _ = build_tokenizer(
        features_cfg("hubert", weights, options={"cmvn": "utterance"})
    ).encode(wav, lengths)
    by_hand = utterance_cmvn(raw.transpose(1, 2), frames).transpose(1, 2)
    torch.testing.assert_close(normalised, by_hand)
    assert not torch.allclose(raw, normalised)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"weights": None}, "`weights` is required: a hub id or local directory"),
        ({"layers": []}, "`layers` is required"),
        ({"codebook_size": 500}, "does not use `codebook_size`"),
        ({"centroids": "somewhere"}, "does not use `centroids`"),
        ({"options": {"stack": 2}}, r"unknown options \['stack'\]"),
        ({"layers": [1, 9]}, r"layers \[9\] out of range"),
    ],
)
def test_config_errors_name_the_key(weights, fields, message):
    cfg = features_cfg("hubert", weights)
    for key, value in fields.items():
        setattr(cfg, key, value)
    with pytest.raises(ValueError, match=message):
        build_tokenizer(cfg)


def test_offline_features_refuse_weights():
    with pytest.raises(ValueError, match="'mfcc-features' does not use `weights`"):
        build_tokenizer(TokenizerConfig(name="mfcc-features", weights="facebook/hubert-base-ls960"))


def test_shipped_config_loads():
    cfg = load_config(TokenizerConfig, CONFIGS / "hubert-features.yaml")
    assert cfg.name == "hubert-features" and cfg.layers == [1, 3, 7, 12, 18, 23]
    assert cfg.weights == "facebook/hubert-large-ll60k"
