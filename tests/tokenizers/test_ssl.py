"""SSL k-means backends (hubert-, wavlm-, wav2vec2-kmeans) on tiny random-init models of the
real transformers classes, saved with save_pretrained; centroids fitted on a tiny SynthDASB."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_ssl_model

from mmllm.config import from_dict, load_config
from mmllm.tokenizers.backends.ssl import SSLFeatures, fit_ssl_kmeans
from mmllm.tokenizers.base import PAD_CODE, TokenizerConfig, deduplicate_units, pad_batch
from mmllm.tokenizers.hf import WeightsUnavailableError
from mmllm.tokenizers.kmeans import load_centroids, save_centroids
from mmllm.tokenizers.registry import build_tokenizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tokenizers"
SECONDS = [0.3, 1.1, 0.7]
K = 16


MODELS = {
    "wavlm": ("wavlm-kmeans", "wavlm", "layer"),
    "hubert": ("hubert-kmeans", "hubert", "layer"),
    "wav2vec2": ("wav2vec2-kmeans", "wav2vec2", "layer"),
    "wavlm-group": ("wavlm-kmeans", "wavlm", "group"),
    "hubert-group": ("hubert-kmeans", "hubert", "group"),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = {}
    for key, (_, kind, norm) in MODELS.items():
        folder = tmp_path_factory.mktemp(key)
        tiny_ssl_model(kind, norm).save_pretrained(folder)
        out[key] = str(folder)
    return out


def waveforms(seconds=SECONDS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(s * 16000) + 37, generator=generator) for s in seconds]


def cfg_for(key, weights, **fields):
    name = MODELS[key][0]
    return TokenizerConfig(name=name, weights=weights[key], **{"layers": [1, 3], **fields})


@pytest.fixture(scope="module")
def centroids(weights, tmp_path_factory):
    """key -> centroid directory: K random feature frames per layer (0..3), a fit stand-in."""
    out = {}
    for key in MODELS:
        cfg = cfg_for(key, weights, layers=[0, 1, 2, 3])
        features = SSLFeatures(cfg)
        layer_features, frame_lengths = features(*pad_batch(waveforms([1.0, 1.5], seed=9)))
        generator = torch.Generator().manual_seed(1)
        tensors = {}
        for layer, feature in zip(features.layers, layer_features, strict=True):
            frames = torch.cat([feature[i, :n] for i, n in enumerate(frame_lengths.tolist())])
            tensors[f"layer_{layer}"] = frames[torch.randperm(len(frames), generator=generator)[:K]]
        folder = tmp_path_factory.mktemp(f"centroids-{key}")
        save_centroids(folder, tensors, {"model_type": features.model_type, "normalize": False})
        out[key] = str(folder)
    return out


def conv_frames(tok, items):
    """Frame counts by transformers' own formula, independent of ours."""
    lengths = torch.tensor([len(w) for w in items])
    return tok.features.model._get_feat_extract_output_lengths(lengths).tolist()


def make(key, weights, centroids, **fields):
    cfg = cfg_for(key, weights, codebook_size=K, centroids=centroids[key], **fields)
    return build_tokenizer(cfg)


# ----------------------------------------------------------------------------- properties


def test_properties_and_bitrate(weights, centroids):
    tok = make("wavlm", weights, centroids)
    assert (tok.sample_rate, tok.frame_rate_hz, tok.num_codebooks, tok.codebook_size) == (
        16000,
        50.0,
        2,
        K,
    )
    assert tok.bitrate_bps == 2 * 4 * 50  # log2(16) = 4 bits
    assert not tok.can_decode
    codes, frame_lengths = tok.encode(*pad_batch(waveforms([0.5])))
    with pytest.raises(NotImplementedError, match="vocoder"):
        tok.decode(codes, frame_lengths)


def test_frame_lengths_follow_the_conv_formula(weights, centroids):
    tok = make("hubert", weights, centroids)
    lengths = torch.tensor([0, 399, 400, 719, 720, 16000, 17637])
    assert tok.frame_lengths(lengths).tolist() == [0, 0, 1, 1, 2, 49, 54]
    model = tok.features.model
    assert (
        tok.frame_lengths(lengths[2:]).tolist()
        == model._get_feat_extract_output_lengths(lengths[2:]).tolist()
    )


def test_layer_zero_and_dropped_layers(weights, centroids):
    tok = make("wavlm", weights, centroids, layers=[0])
    assert len(tok.features.model.encoder.layers) == 1  # of 3: layers above are never run
    items = waveforms([0.4, 0.8])
    codes, frame_lengths = tok.encode(*pad_batch(items))
    alone = tok.encode(items[0][None], torch.tensor([len(items[0])]))[0]
    assert torch.equal(codes[0, :, : frame_lengths[0]], alone[0])
    assert len(make("wavlm", weights, centroids, layers=[2, 1]).features.model.encoder.layers) == 2


def test_batching_path_depends_on_the_feature_encoder_norm(weights, centroids):
    assert make("wavlm", weights, centroids).features.batching == "attention_mask"
    assert make("wavlm-group", weights, centroids).features.batching == "equal-length groups"


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("key", list(MODELS))
def test_batched_encoding_equals_one_by_one(weights, centroids, key):
    tok = make(key, weights, centroids)
    items = waveforms() + [waveforms([0.7], seed=5)[0]]  # two of equal length (group path)
    codes, frame_lengths = tok.encode(*pad_batch(items))
    expected = conv_frames(tok, items)
    assert frame_lengths.tolist() == expected
    assert codes.shape == (4, 2, max(expected))
    for i, item in enumerate(items):
        alone, alone_length = tok.encode(item[None], torch.tensor([len(item)]))
        assert alone_length.tolist() == [expected[i]]
        assert torch.equal(codes[i, :, : expected[i]], alone[0]), f"item {i}"
        assert (codes[i, :, expected[i] :] == PAD_CODE).all()
    valid = codes[codes != PAD_CODE]
    assert ((valid >= 0) & (valid < K)).all()
    assert valid.unique().numel() >= K // 2, "codes barely vary: the comparison would be vacuous"


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("key", ["wavlm-group", "hubert-group"])
def test_group_norm_models_cannot_be_masked(weights, key):
    """Why such models take the equal-length path: attention_mask does not reach the
    feature encoder's GroupNorm, so a padded batch changes every frame of shorter items."""
    features = SSLFeatures(cfg_for(key, weights))
    items = waveforms()
    wav, lengths = pad_batch(items)
    mask = (torch.arange(wav.shape[1])[None] < lengths[:, None]).long()
    with torch.inference_mode():
        batched = features.model(wav, attention_mask=mask).last_hidden_state
        alone = features.model(items[0][None]).last_hidden_state
    assert not torch.allclose(batched[0, : alone.shape[1]], alone[0], atol=1e-3)


def test_items_shorter_than_the_receptive_field_have_no_frames(weights, centroids):
    tok = make("wav2vec2", weights, centroids)
    items = [torch.full((200,), 0.1), waveforms([0.5])[0], torch.zeros(0)]
    codes, frame_lengths = tok.encode(*pad_batch(items))
    assert frame_lengths.tolist() == [0, 24, 0]
    assert (codes[0] == PAD_CODE).all() and (codes[2] == PAD_CODE).all()
    assert (codes[1] >= 0).all()
    empty, empty_lengths = tok.encode(torch.zeros(2, 100), torch.tensor([100, 50]))
    assert empty.shape == (2, 2, 0) and empty_lengths.tolist() == [0, 0]


def test_normalize_makes_codes_gain_invariant(weights, centroids, tmp_path):
    items = waveforms([0.6, 0.9])
    wav, lengths = pad_batch(items)
    # centroids fitted without normalisation are refused for a normalising config
    with pytest.raises(ValueError, match="fitted with normalize=False"):
        make("wavlm", weights, centroids, options={"normalize": True})
    tensors, card = load_centroids(centroids["wavlm"])
    save_centroids(tmp_path, tensors, {**card, "normalize": True})
    cfg = cfg_for("wavlm", weights, codebook_size=K, centroids=str(tmp_path))
    tok = build_tokenizer(dataclasses.replace(cfg, options={"normalize": True}))
    assert tok.features.normalize
    assert torch.equal(tok.encode(wav, lengths)[0], tok.encode(3.0 * wav, lengths)[0])


def test_do_normalize_is_read_from_the_preprocessor_config(weights, tmp_path):
    import shutil

    folder = tmp_path / "with-preprocessor"
    shutil.copytree(weights["hubert"], folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    assert SSLFeatures(
        TokenizerConfig(name="hubert-kmeans", weights=str(folder), layers=[1])
    ).normalize
    assert not SSLFeatures(cfg_for("hubert", weights)).normalize


# ----------------------------------------------------------------------------- dedup


def test_deduplicate_collapses_runs_for_one_layer(weights, centroids):
    plain = make("hubert", weights, centroids, layers=[3])
    dedup = make("hubert", weights, centroids, layers=[3], deduplicate=True)
    items = waveforms()
    wav, lengths = pad_batch(items)
    codes, frame_lengths = plain.encode(wav, lengths)
    short, short_lengths = dedup.encode(wav, lengths)
    assert (short_lengths < frame_lengths).any(), "no repeated units: the test would be vacuous"
    for i in range(len(items)):
        runs = torch.unique_consecutive(codes[i, 0, : frame_lengths[i]])
        assert short_lengths[i] == len(runs)
        assert torch.equal(short[i, 0, : short_lengths[i]], runs)
        assert (short[i, 0, short_lengths[i] :] == PAD_CODE).all()
        assert (short[i, 0, 1 : short_lengths[i]] != short[i, 0, : short_lengths[i] - 1]).all()
    assert short.shape[-1] == int(short_lengths.max())


def test_deduplicate_units_worked_example():
    codes = torch.tensor(
        [[[5, 5, 7, 7, 7, 5, 1]], [[2, 2, 2, PAD_CODE, PAD_CODE, PAD_CODE, PAD_CODE]]]
    )
    out, lengths = deduplicate_units(codes, torch.tensor([7, 3]))
    assert lengths.tolist() == [4, 1]
    assert out.tolist() == [[[5, 7, 5, 1]], [[2, PAD_CODE, PAD_CODE, PAD_CODE]]]


def test_deduplicate_needs_exactly_one_layer(weights, centroids):
    with pytest.raises(ValueError, match=r"`deduplicate` needs exactly one layer, got \[1, 3\]"):
        make("wavlm", weights, centroids, deduplicate=True)


# ----------------------------------------------------------------------------- config errors


def test_config_errors_name_the_problem(weights, centroids, tmp_path):
    with pytest.raises(ValueError, match="`layers` is required"):
        make("wavlm", weights, centroids, layers=[])
    with pytest.raises(ValueError, match=r"`layers` repeats a layer"):
        make("wavlm", weights, centroids, layers=[1, 1])
    with pytest.raises(
        ValueError, match=r"has no centroids for \['layer_5'\] \(it has \['layer_0'"
    ):
        make("wavlm", weights, centroids, layers=[2, 5])  # checked before the model loads
    with pytest.raises(ValueError, match="`centroids` is required"):
        build_tokenizer(cfg_for("wavlm", weights))
    with pytest.raises(ValueError, match=r"layer_1 is \[16, 32\], expected \[codebook_size=1000"):
        build_tokenizer(cfg_for("wavlm", weights, centroids=centroids["wavlm"]))
    with pytest.raises(ValueError, match="fitted on 'hubert' features, not 'wavlm'"):
        build_tokenizer(cfg_for("wavlm", weights, codebook_size=K, centroids=centroids["hubert"]))
    with pytest.raises(ValueError, match="does not use `bandwidth_kbps`"):
        make("wavlm", weights, centroids, bandwidth_kbps=6.0)
    with pytest.raises(ValueError, match=r"num_codebooks 3 != 2 layers"):
        make("wavlm", weights, centroids, num_codebooks=3)
    tensors, card = load_centroids(centroids["wavlm"])
    save_centroids(tmp_path, {**tensors, "layer_9": tensors["layer_1"].clone()}, card)
    with pytest.raises(ValueError, match=r"layers \[9\] out of range.*hidden_states 0\.\.3"):
        make("wavlm", weights, {"wavlm": str(tmp_path)}, layers=[1, 9])


def test_offline_hub_id_names_the_offline_tokenizers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        WeightsUnavailableError, match="no weights reachable for 'mmllm-test/no-ssl'"
    ):
        SSLFeatures(TokenizerConfig(name="wavlm-kmeans", weights="mmllm-test/no-ssl", layers=[1]))


@pytest.mark.parametrize("stem", ["wavlm-kmeans", "hubert-kmeans", "wav2vec2-kmeans"])
def test_shipped_ssl_configs_load(stem):
    cfg = load_config(TokenizerConfig, CONFIGS / f"{stem}.yaml")
    assert cfg.name == stem
    assert cfg.layers == [1, 3, 7, 12, 18, 23] and cfg.codebook_size == 1000
    assert cfg.weights and cfg.centroids
    assert 6 * math.log2(1000) * 50 == pytest.approx(2989.7, abs=0.1)  # DASB's medium band


# ----------------------------------------------------------------------------- fitting


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A SynthDASB with 10 ASR training rows (a few seconds to render)."""
    from mmllm.synth.build import SynthConfig, build

    cfg = from_dict(
        SynthConfig,
        {"size": "tiny", "tasks": ["asr"], "counts": {"asr": {"train": 10, "valid": 2, "test": 2}}},
    )
    return build(cfg, tmp_path_factory.mktemp("synth") / "synthdasb", workers=1)


def test_fit_on_synthdasb_then_encode(weights, synth, tmp_path):
    from mmllm.audio.io import decode_audio_value
    from mmllm.corpus.reader import load_task

    cfg = cfg_for("wavlm", weights, layers=[1, 3], codebook_size=8)
    out = fit_ssl_kmeans(
        cfg, synth, tmp_path / "km", max_frames=600, seed=0, max_steps=20, progress=False
    )
    tensors, card = load_centroids(out)
    assert sorted(tensors) == ["layer_1", "layer_3"]
    assert all(t.shape == (8, 32) for t in tensors.values())
    assert card["model_type"] == "wavlm" and card["layers"] == [1, 3]
    assert card["codebook_size"] == 8 and card["data"]["rows"] == 10
    assert card["frames_sampled"] == min(600, card["frames_seen"]) and card["frames_seen"] > 600
    assert card["batching"] == "attention_mask" and card["normalize"] is False

    again = fit_ssl_kmeans(
        cfg, synth, tmp_path / "km2", max_frames=600, seed=0, max_steps=20, progress=False
    )
    assert all(torch.equal(tensors[k], load_centroids(again)[0][k]) for k in tensors)  # seeded

    tok = build_tokenizer(dataclasses.replace(cfg, centroids=str(out)))
    rows = load_task(synth, "asr")["test"]
    items = [torch.from_numpy(decode_audio_value(r["audio"], 16000)) for r in rows]
    codes, frame_lengths = tok.encode(*pad_batch(items))
    assert frame_lengths.tolist() == conv_frames(tok, items)
    for i, item in enumerate(items):
        valid = codes[i, :, : frame_lengths[i]]
        assert ((valid >= 0) & (valid < 8)).all()
        assert torch.equal(valid, tok.encode(item[None], torch.tensor([len(item)]))[0][0])
    assert codes[codes != PAD_CODE].unique().numel() > 4


def test_fit_reads_only_the_rows_it_needs(weights, synth, tmp_path):
    """Rows are drawn at random and read until twice max_frames frames went by: a corpus
    of any size costs the SSL model the same (it used to encode the whole split)."""
    cfg = cfg_for("hubert", weights, layers=[2], codebook_size=4)
    cards = [
        load_centroids(
            fit_ssl_kmeans(
                cfg,
                synth,
                tmp_path / f"km{seed}",
                max_frames=40,
                seed=seed,
                max_steps=5,
                progress=False,
            )  # fmt: skip
        )[1]
        for seed in (0, 1)
    ]
    for card in cards:
        assert 1 <= card["data"]["rows"] < 10  # of the split's 10
        assert card["frames_seen"] >= 80 and card["frames_sampled"] == 40
    assert len({card["frames_seen"] for card in cards}) == 2  # other seeds, other rows


def test_fit_refuses_fewer_frames_than_clusters(weights, synth, tmp_path):
    cfg = cfg_for("hubert", weights, layers=[2], codebook_size=100)
    with pytest.raises(ValueError, match=r"50 frames from \d rows .* fewer than k=100"):
        fit_ssl_kmeans(cfg, synth, tmp_path / "km", max_frames=50, seed=0, progress=False)


# ----------------------------------------------------------------------------- vocoder


def test_trained_vocoder_decodes_a_two_layer_tokenizer(weights, centroids, synth_tiny, tmp_path):
    """End to end: token cache of SynthDASB tiny ASR -> a few vocoder steps -> `vocoder: DIR`."""
    from mmllm.data.cache import CachedSplit, extract_corpus
    from mmllm.tokenizers.vocoder import VocoderConfig, load_vocoder, read_card
    from mmllm.vocoder.train import train_vocoder

    cfg = cfg_for("hubert", weights, codebook_size=K, centroids=centroids["hubert"])  # [1, 3]
    # conv frames: 1 or 2 fewer than ceil(samples / 320), which the vocoder's sampler allows
    cache = extract_corpus(cfg, synth_tiny, tmp_path / "tokens", ["asr"], ("train", "test"))
    vocoder_cfg = VocoderConfig(
        hidden_size=8,
        intermediate_size=16,
        num_layers=1,
        kernel_size=3,
        n_fft=960,
        segment_frames=10,
        batch_size=2,
        stft_resolutions=[[256, 64], [512, 128]],
        mel_n_fft=512,
        mel_hop=128,
        mel_bins=40,
        tasks=["asr"],
        warmup_steps=1,
        steps=3,
    )  # default hop 320 = the conv feature encoder's
    out = tmp_path / "vocoder"
    records = train_vocoder(vocoder_cfg, cfg, synth_tiny, cache, out, progress=False)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in records)

    card = read_card(out)
    assert card["tokenizer"]["name"] == "hubert-kmeans" and card["tokenizer"]["layers"] == [1, 3]
    assert (card["num_codebooks"], card["codebook_size"]) == (2, K)
    assert len(card["codebook_weights"]) == 2 and sum(card["codebook_weights"]) == pytest.approx(1)

    tok = build_tokenizer(dataclasses.replace(cfg, vocoder=str(out)))
    assert tok.can_decode and tok.vocoder.codebook_weights().shape == (2,)  # one per layer
    assert tok.vocoder.codebook_weights().tolist() == pytest.approx(card["codebook_weights"])
    split = CachedSplit(cache / "asr" / "test")
    items = [torch.from_numpy(split.get(key).astype("int64")) for key in split.entry_keys()[:3]]
    frame_lengths = torch.tensor([c.shape[1] for c in items])
    codes = torch.full((3, 2, int(frame_lengths.max())), PAD_CODE)
    for b, item in enumerate(items):
        codes[b, :, : item.shape[1]] = item
    wav, lengths = tok.decode(codes, frame_lengths)
    assert wav.shape == (3, codes.shape[-1] * 320) and torch.equal(lengths, frame_lengths * 320)
    assert torch.isfinite(wav).all()
    for b, n in enumerate(lengths.tolist()):
        assert wav[b, :n].abs().max() > 0 and (wav[b, n:] == 0).all()
    assert torch.equal(wav, load_vocoder(out).synthesize(codes, frame_lengths)[0])

    # tied to this fit and these layers: other layers or centroids are refused
    with pytest.raises(ValueError, match=r"trained for another.*layers: vocoder \[1, 3\]"):
        build_tokenizer(dataclasses.replace(cfg, layers=[1, 2], vocoder=str(out)))
    tensors, centroid_card = load_centroids(centroids["hubert"])
    save_centroids(tmp_path / "refit", {k: v.flip(0) for k, v in tensors.items()}, centroid_card)
    refit = dataclasses.replace(cfg, centroids=str(tmp_path / "refit"), vocoder=str(out))
    with pytest.raises(ValueError, match=r"trained for another.*centroids_sha256"):
        build_tokenizer(refit)
