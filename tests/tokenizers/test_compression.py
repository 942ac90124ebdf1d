"""Codec backends (encodec, dac, mimi) on tiny random-init models of the real transformers
classes, saved with save_pretrained and loaded through `weights` like real checkpoints."""

import math
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_models import FakeSpeechTokenizer, scramble, tiny_dac, tiny_encodec, tiny_mimi
from torch import nn

from mmllm.config import load_config
from mmllm.tokenizers.base import PAD_CODE, TokenizerConfig, pad_batch
from mmllm.tokenizers.hf import WeightsUnavailableError, _probe, conv_receptive_field
from mmllm.tokenizers.registry import build_tokenizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tokenizers"
SECONDS = [0.3, 1.1, 0.7]  # different lengths, none a whole number of frames (see waveforms)


BUILDERS = {"encodec": tiny_encodec, "dac": tiny_dac, "mimi": tiny_mimi}
EXTRA = {"encodec": {"bandwidth_kbps": 6.0}, "dac": {}, "mimi": {}}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """name -> directory of a tiny saved model (built once per module)."""
    out = {}
    for index, (name, build) in enumerate(BUILDERS.items()):
        folder = tmp_path_factory.mktemp(name)
        torch.manual_seed(index)  # the same tiny model every run
        scramble(build(), seed=index).save_pretrained(folder)
        out[name] = str(folder)
    return out


def make(name, weights, **fields):
    return build_tokenizer(
        TokenizerConfig(name=name, weights=weights[name], **{**EXTRA[name], **fields})
    )


def waveforms(sample_rate, seconds=SECONDS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # +37 samples: every item ends inside a frame, so the partial last frame is exercised
    return [
        0.3 * torch.randn(int(s * sample_rate) + 37, generator=generator).clamp(-3, 3) / 3
        for s in seconds
    ]


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("kbps, codebooks", [(1.5, 2), (3.0, 4), (6.0, 8), (12.0, 16), (24.0, 32)])
def test_encodec_bandwidth_sets_codebooks_and_bitrate(weights, kbps, codebooks):
    tok = make("encodec", weights, bandwidth_kbps=kbps)
    assert (tok.sample_rate, tok.frame_rate_hz, tok.codebook_size) == (24000, 75.0, 1024)
    assert tok.num_codebooks == codebooks
    assert tok.bitrate_bps == kbps * 1000  # K x 10 bits x 75 Hz, exactly
    assert tok.can_decode


def test_encodec_6kbps_is_6000_bps(weights):
    tok = make("encodec", weights)
    assert tok.describe() == {
        "name": "encodec",
        "sample_rate": 24000,
        "frame_rate_hz": 75.0,
        "num_codebooks": 8,
        "codebook_size": 1024,
        "bitrate_bps": 6000.0,
        "can_decode": True,
        "continuous": False,
        "deduplicated": False,
    }


def test_encodec_refuses_missing_bandwidth(weights):
    with pytest.raises(ValueError, match=r"`bandwidth_kbps` is required.*lowest bandwidth"):
        build_tokenizer(TokenizerConfig(name="encodec", weights=weights["encodec"]))


def test_encodec_refuses_unknown_bandwidth_and_contradicting_codebooks(weights):
    with pytest.raises(ValueError, match=r"bandwidth_kbps 5.0 is not one of"):
        make("encodec", weights, bandwidth_kbps=5.0)
    with pytest.raises(ValueError, match=r"num_codebooks 4 contradicts bandwidth_kbps 6.0"):
        make("encodec", weights, num_codebooks=4)


def test_dac_properties_and_num_codebooks(weights):
    tok = make("dac", weights)
    assert (tok.sample_rate, tok.frame_rate_hz, tok.codebook_size, tok.num_codebooks) == (
        16000,
        50.0,
        1024,
        4,
    )
    two = make("dac", weights, num_codebooks=2)
    assert two.bitrate_bps == 2 * 10 * 50
    wav, lengths = pad_batch(waveforms(16000, [0.5]))
    assert torch.equal(two.encode(wav, lengths)[0], tok.encode(wav, lengths)[0][:, :2])
    with pytest.raises(ValueError, match=r"num_codebooks must be in \[1, 4\]"):
        make("dac", weights, num_codebooks=5)


def test_mimi_properties(weights):
    tok = make("mimi", weights)
    assert (tok.sample_rate, tok.frame_rate_hz, tok.codebook_size, tok.num_codebooks) == (
        24000,
        12.5,
        2048,
        8,
    )
    assert tok.bitrate_bps == 8 * 11 * 12.5
    assert make("mimi", weights, num_codebooks=3).num_codebooks == 3


def test_unused_fields_and_options_are_refused(weights):
    with pytest.raises(ValueError, match=r"does not use `layers`"):
        make("mimi", weights, layers=[3])
    with pytest.raises(ValueError, match=r"does not use `bandwidth_kbps`"):
        make("dac", weights, bandwidth_kbps=6.0)
    with pytest.raises(ValueError, match=r"unknown options \['chunk'\]"):
        make("dac", weights, options={"chunk": 1})


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("name", ["encodec", "dac", "mimi"])
def test_batched_encoding_equals_one_by_one(weights, name):
    tok = make(name, weights)
    items = waveforms(tok.sample_rate)
    wav, lengths = pad_batch(items)
    codes, frame_lengths = tok.encode(wav, lengths)

    hop = tok.sample_rate / tok.frame_rate_hz
    expected_lengths = [math.ceil(len(w) / hop) for w in items]
    assert frame_lengths.tolist() == expected_lengths
    assert codes.dtype == torch.int64
    assert codes.shape == (3, tok.num_codebooks, max(expected_lengths))
    for i, item in enumerate(items):
        alone, alone_length = tok.encode(item[None], torch.tensor([len(item)]))
        assert alone_length.tolist() == [expected_lengths[i]]
        assert torch.equal(codes[i, :, : expected_lengths[i]], alone[0]), f"item {i}"
        assert (codes[i, :, expected_lengths[i] :] == PAD_CODE).all()
        assert ((alone >= 0) & (alone < tok.codebook_size)).all()
    valid = codes[codes != PAD_CODE]
    assert valid.unique().numel() > 10, "codes barely vary: the comparison would be vacuous"


@pytest.mark.parametrize("name", ["encodec", "dac", "mimi"])
def test_garbage_beyond_lengths_is_ignored(weights, name):
    tok = make(name, weights)
    items = waveforms(tok.sample_rate, [0.4, 0.9])
    wav, lengths = pad_batch(items)
    noisy = wav.clone()
    noisy[0, len(items[0]) :] = 0.5  # a caller that did not zero its padding
    assert torch.equal(tok.encode(noisy, lengths)[0], tok.encode(wav, lengths)[0])


def test_dac_needs_the_tail_fix(weights):
    """DAC is not causal: one plain padded batch changes the last frames of shorter items."""
    tok = make("dac", weights)
    items = waveforms(16000)
    wav, lengths = pad_batch(items)
    codes, frame_lengths = tok.encode(wav, lengths)
    padded = torch.zeros(3, int(frame_lengths.max()) * 320)
    for i, item in enumerate(items):
        padded[i, : len(item)] = item
    with torch.inference_mode():
        plain = tok._run(padded)
    differs = [
        not torch.equal(plain[i, :, : frame_lengths[i]], codes[i, :, : frame_lengths[i]])
        for i in range(3)
    ]
    assert differs == [True, False, True]  # item 1 is the longest: it saw no padding
    assert (tok.context_frames, tok.tail_frames) == (8, 8)  # dac_16khz's strides and kernels


def test_dac_receptive_field_bounds_what_a_frame_reads(weights):
    tok = make("dac", weights)
    first, last = conv_receptive_field(
        [m for m in tok.model.encoder.modules() if isinstance(m, nn.Conv1d)]
    )
    assert (first, last) == (-2501, 2812)
    frame, hop = 12, 320
    base = 0.1 * torch.randn(1, 1, 30 * hop, generator=torch.Generator().manual_seed(3))
    # Just outside the field nothing moves; inside it does. (At the field's very edge the
    # influence is a product of ~30 corner weights, below float32 resolution.)
    with torch.inference_mode():
        reference = tok.model.encoder(base)[..., frame]
        for sample, reaches in [
            (frame * hop + first - 1, False),
            (frame * hop + first + 400, True),
            (frame * hop, True),
            (frame * hop + last - 400, True),
            (frame * hop + last + 1, False),
        ]:
            moved = base.clone()
            moved[..., sample] += 1.0
            changed = not torch.equal(tok.model.encoder(moved)[..., frame], reference)
            assert changed == reaches, (sample, reaches)


def test_short_items_and_single_frame_items(weights):
    tok = make("dac", weights)
    items = [torch.full((n,), 0.1) for n in (5, 320, 321, 4000, 16000)]
    wav, lengths = pad_batch(items)
    codes, frame_lengths = tok.encode(wav, lengths)
    assert frame_lengths.tolist() == [1, 1, 2, 13, 50]
    for i, item in enumerate(items):
        alone = tok.encode(item[None], torch.tensor([len(item)]))[0]
        assert torch.equal(codes[i, :, : frame_lengths[i]], alone[0]), i


def test_empty_item_gives_no_frames(weights):
    tok = make("mimi", weights)
    wav, lengths = pad_batch([torch.zeros(0), torch.full((3000,), 0.1)])
    codes, frame_lengths = tok.encode(wav, lengths)
    assert frame_lengths.tolist() == [0, 2]
    assert (codes[0] == PAD_CODE).all() and (codes[1] >= 0).all()


def test_codes_are_ordinary_tensors(weights):
    tok = make("mimi", weights)
    codes, _ = tok.encode(*pad_batch(waveforms(24000, [0.2, 0.5])))
    codes[codes == PAD_CODE] = 0  # an inference-mode tensor would refuse this in-place write
    assert not codes.is_inference()


# ----------------------------------------------------------------------------- decode


@pytest.mark.parametrize("name", ["encodec", "dac", "mimi"])
def test_decode_returns_audio_of_the_encoded_length(weights, name):
    tok = make(name, weights)
    items = waveforms(tok.sample_rate)
    codes, frame_lengths = tok.encode(*pad_batch(items))
    audio, audio_lengths = tok.decode(codes, frame_lengths)
    hop = round(tok.sample_rate / tok.frame_rate_hz)
    assert audio_lengths.tolist() == (frame_lengths * hop).tolist()
    assert audio.shape == (3, int(audio_lengths.max()))
    for i, item in enumerate(items):
        assert 0 <= audio_lengths[i] - len(item) < hop
        assert (audio[i, audio_lengths[i] :] == 0).all()
    assert torch.isfinite(audio).all() and audio.abs().sum() > 0
    if name == "dac":  # decoded by equal-length groups: batched == alone
        alone, _ = tok.decode(codes[:1, :, : frame_lengths[0]], frame_lengths[:1])
        assert torch.allclose(audio[0, : alone.shape[1]], alone[0], atol=1e-5)


# ----------------------------------------------------------------------------- weights


def test_offline_hub_id_fails_fast_and_names_the_offline_tokenizers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        build_tokenizer(
            TokenizerConfig(name="encodec", weights="mmllm-test/no-such-codec", bandwidth_kbps=6.0)
        )
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "no weights reachable for 'mmllm-test/no-such-codec'" in message
    assert "mfcc-kmeans" in message and "mel-rvq" in message


def test_unreachable_hub_is_detected_without_offline_flags(monkeypatch):
    for var in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    _probe.cache_clear()
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="no weights reachable for 'mmllm-test/none'"):
        build_tokenizer(TokenizerConfig(name="mimi", weights="mmllm-test/none"))
    assert time.monotonic() - start < 10
    _probe.cache_clear()


def test_missing_weights_and_missing_directory(weights, tmp_path):
    with pytest.raises(ValueError, match=r"`weights` is required.*descript/dac_16khz"):
        build_tokenizer(TokenizerConfig(name="dac"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_tokenizer(TokenizerConfig(name="dac", weights=str(tmp_path / "nothing")))


def test_checkpoint_of_another_codec_is_refused(weights):
    with pytest.raises(ValueError, match=r"is not a DacModel checkpoint"):
        build_tokenizer(TokenizerConfig(name="dac", weights=weights["encodec"]))


def test_speechtokenizer_without_its_package_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "speechtokenizer", None)  # import fails, as on CPU here
    with pytest.raises(ImportError) as err:
        build_tokenizer(TokenizerConfig(name="speechtokenizer", weights="fnlp/SpeechTokenizer"))
    message = str(err.value)
    assert "`speechtokenizer` package" in message and "torchaudio" in message
    assert "mimi" in message and "mfcc-kmeans" in message


# ----------------------------------------------------------------------------- speechtokenizer


@pytest.fixture
def fake_speechtokenizer(monkeypatch, tmp_path):
    import types

    module = types.ModuleType("speechtokenizer")
    module.SpeechTokenizer = FakeSpeechTokenizer
    monkeypatch.setitem(sys.modules, "speechtokenizer", module)
    folder = tmp_path / "speechtokenizer_hubert_avg"  # the hub repository's layout
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "SpeechTokenizer.pt").write_bytes(b"")
    return str(tmp_path)


def test_speechtokenizer_wrapper_batches_exactly(fake_speechtokenizer):
    tok = build_tokenizer(TokenizerConfig(name="speechtokenizer", weights=fake_speechtokenizer))
    assert (tok.sample_rate, tok.frame_rate_hz, tok.num_codebooks, tok.codebook_size) == (
        16000,
        50.0,
        8,
        1024,
    )
    assert tok.bitrate_bps == 4000
    items = waveforms(16000)
    wav, lengths = pad_batch(items)
    codes, frame_lengths = tok.encode(wav, lengths)
    assert frame_lengths.tolist() == [math.ceil(len(w) / 320) for w in items]
    plain = (
        FakeSpeechTokenizer()
        .encode(torch.nn.functional.pad(wav, (0, codes.shape[-1] * 320 - wav.shape[1]))[:, None])
        .transpose(0, 1)
    )
    for i, item in enumerate(items):
        alone = tok.encode(item[None], torch.tensor([len(item)]))[0][0]
        assert torch.equal(codes[i, :, : frame_lengths[i]], alone)
        assert (codes[i, :, frame_lengths[i] :] == PAD_CODE).all()
        if i != 1:  # non-causal: one plain padded batch would change the shorter items
            assert not torch.equal(plain[i, :, : frame_lengths[i]], alone)
    audio, audio_lengths = tok.decode(codes, frame_lengths)
    assert audio_lengths.tolist() == (frame_lengths * 320).tolist()
    assert audio.shape == (3, int(audio_lengths.max()))
    two = build_tokenizer(
        TokenizerConfig(name="speechtokenizer", weights=fake_speechtokenizer, num_codebooks=2)
    )
    assert torch.equal(two.encode(wav, lengths)[0], codes[:, :2])


def test_speechtokenizer_offline_hub_id(fake_speechtokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="no weights reachable for 'mmllm-test/st'"):
        build_tokenizer(TokenizerConfig(name="speechtokenizer", weights="mmllm-test/st"))


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "stem, name",
    [
        ("encodec-6kbps", "encodec"),
        ("dac-16khz", "dac"),
        ("mimi-8", "mimi"),
        ("speechtokenizer", "speechtokenizer"),
    ],
)
def test_shipped_codec_configs_load(stem, name):
    from mmllm.tokenizers.base import TOKENIZERS

    cfg = load_config(TokenizerConfig, CONFIGS / f"{stem}.yaml")
    assert cfg.name == name and name in TOKENIZERS
    assert cfg.weights and not Path(cfg.weights).exists()  # a hub id
    if name == "encodec":
        assert cfg.bandwidth_kbps == 6.0
