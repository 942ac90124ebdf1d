"""Offline tokenizers (mfcc-kmeans, mel-rvq): fitting on SynthDASB tiny, encode, decode."""

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from mmllm.audio.features import append_deltas, mfcc, utterance_cmvn
from mmllm.audio.io import decode_audio_value
from mmllm.config import load_config
from mmllm.corpus.reader import load_task
from mmllm.synth.build import SynthConfig, build
from mmllm.tokenizers.backends.offline import log_mel_frames, mfcc_frames
from mmllm.tokenizers.backends.offline_fit import fit_offline_tokenizer
from mmllm.tokenizers.base import PAD_CODE, TokenizerConfig, pad_batch
from mmllm.tokenizers.registry import build_tokenizer

ROOT = Path(__file__).resolve().parents[2]
K = 32
TASKS = ("asr", "sid")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return build(SynthConfig.from_name("tiny", tasks=list(TASKS)), out, workers=2)


def _fit(corpus: Path, out: Path, name: str, num_codebooks: int) -> Path:
    return fit_offline_tokenizer(
        name,
        corpus,
        out,
        k=K,
        num_codebooks=num_codebooks,
        max_frames=8000,
        seed=0,
        tasks=TASKS,
        max_steps=60,
        progress=False,
    )


@pytest.fixture(scope="module")
def mfcc_dir(corpus, tmp_path_factory) -> Path:
    return _fit(corpus, tmp_path_factory.mktemp("mfcc") / "km", "mfcc-kmeans", 1)


@pytest.fixture(scope="module")
def rvq_dir(corpus, tmp_path_factory) -> Path:
    return _fit(corpus, tmp_path_factory.mktemp("rvq") / "km", "mel-rvq", 4)


@pytest.fixture(scope="module")
def tokenizers(mfcc_dir, rvq_dir) -> dict:
    return {
        "mfcc-kmeans": build_tokenizer(
            TokenizerConfig(name="mfcc-kmeans", centroids=str(mfcc_dir))
        ),
        "mel-rvq": build_tokenizer(TokenizerConfig(name="mel-rvq", centroids=str(rvq_dir))),
    }


@pytest.fixture(scope="module")
def held_out(corpus) -> list[torch.Tensor]:
    """Test-split speech (never fitted on) cropped to 0.31 s, 1.0 s and 0.77 s."""
    rows = load_task(corpus, "asr")["test"]
    speech = [torch.from_numpy(decode_audio_value(row["audio"])) for row in rows]
    speech = [s for s in speech if s.numel() >= 24000][:3]
    start = 3200  # skip the leading silence
    return [s[start : start + n] for s, n in zip(speech, (4960, 16000, 12320), strict=True)]


def test_fit_writes_centroids_and_card(mfcc_dir, rvq_dir, corpus):
    for directory, name, tensors in (
        (mfcc_dir, "mfcc-kmeans", {"centroids": [K, 26], "mfcc_mean": [13], "mfcc_std": [13]}),
        (rvq_dir, "mel-rvq", {"codebooks": [4, K, 80]}),
    ):
        card = json.loads((directory / "card.json").read_text())
        assert card["tokenizer"] == name and card["k"] == K and card["seed"] == 0
        assert card["tensors"] == tensors
        assert card["data"] == str(corpus) and card["tasks"] == list(TASKS)
        assert card["splits"] == ["train"] and card["layers"] == []
        assert card["num_frames"] == 8000 < card["frames_seen"]  # reservoir-sampled
        assert card["feature_source"] and card["date"]
    rvq_inertia = json.loads((rvq_dir / "card.json").read_text())["inertia"]
    assert len(rvq_inertia) == 4
    assert all(a > b for a, b in zip(rvq_inertia, rvq_inertia[1:], strict=False)), rvq_inertia


def test_properties(tokenizers, rvq_dir):
    mfcc_tok, rvq_tok = tokenizers["mfcc-kmeans"], tokenizers["mel-rvq"]
    for tok in (mfcc_tok, rvq_tok):
        assert tok.sample_rate == 16000 and tok.frame_rate_hz == 50 and tok.codebook_size == K
    assert (mfcc_tok.num_codebooks, rvq_tok.num_codebooks) == (1, 4)
    assert mfcc_tok.bitrate_bps == 1 * math.log2(K) * 50 == 250.0
    assert rvq_tok.bitrate_bps == 4 * math.log2(K) * 50 == 1000.0
    assert not mfcc_tok.can_decode and rvq_tok.can_decode
    two = build_tokenizer(TokenizerConfig(name="mel-rvq", centroids=str(rvq_dir), num_codebooks=2))
    assert two.num_codebooks == 2 and two.bitrate_bps == 500.0


@pytest.mark.parametrize("name", ["mfcc-kmeans", "mel-rvq"])
def test_batched_encode_equals_one_by_one(tokenizers, held_out, name):
    tok = tokenizers[name]
    items = [*held_out, held_out[0][:100]]  # plus a 100-sample item (shorter than a window)
    wav, lengths = pad_batch(items)
    codes, frame_lengths = tok.encode(wav, lengths)
    assert frame_lengths.tolist() == [16, 50, 39, 1]  # ceil(T / 320)
    assert codes.shape == (4, tok.num_codebooks, 50) and codes.dtype == torch.long
    for b, item in enumerate(items):
        alone, alone_lengths = tok.encode(item[None], torch.tensor([item.numel()]))
        assert alone.shape == (1, tok.num_codebooks, int(frame_lengths[b]))
        assert alone_lengths.tolist() == [int(frame_lengths[b])]
        assert torch.equal(codes[b, :, : int(frame_lengths[b])], alone[0]), f"item {b}"
        assert (codes[b, :, int(frame_lengths[b]) :] == PAD_CODE).all()
        valid = alone[0]
        assert int(valid.min()) >= 0 and int(valid.max()) < K
    # Real speech uses many units, not a handful.
    assert codes[1, 0].unique().numel() >= 8


def test_empty_item_in_batch(tokenizers, held_out):
    wav, lengths = pad_batch([held_out[0], torch.zeros(0)])
    codes, frame_lengths = tokenizers["mel-rvq"].encode(wav, lengths)
    assert frame_lengths.tolist() == [16, 0] and (codes[1] == PAD_CODE).all()


def test_mfcc_kmeans_deduplicate_collapses_runs(tokenizers, mfcc_dir, held_out):
    """deduplicate=True gives the frame codes with every run of a repeated unit collapsed to
    one, per item, whatever else is in the batch."""
    dedup = build_tokenizer(
        TokenizerConfig(name="mfcc-kmeans", centroids=str(mfcc_dir), deduplicate=True)
    )
    assert (
        dedup.describe()["deduplicated"]
        and not tokenizers["mfcc-kmeans"].describe()["deduplicated"]
    )
    wav, lengths = pad_batch(held_out[:3])
    frames, frame_lengths = tokenizers["mfcc-kmeans"].encode(wav, lengths)
    short, short_lengths = dedup.encode(wav, lengths)
    for b in range(3):
        item = frames[b, 0, : int(frame_lengths[b])].tolist()
        expected = [c for i, c in enumerate(item) if i == 0 or c != item[i - 1]]
        assert short[b, 0, : int(short_lengths[b])].tolist() == expected
        assert (short[b, 0, int(short_lengths[b]) :] == PAD_CODE).all()
        assert len(expected) < len(item)  # speech repeats units: something was collapsed


def test_utterance_cmvn_normalises_each_item_on_its_own_frames():
    mfcc = torch.randn(2, 8, 13, dtype=torch.float64) * 3 + 5
    frame_lengths = torch.tensor([8, 4])
    out = utterance_cmvn(mfcc, frame_lengths)
    for b, valid in enumerate((8, 4)):
        item = mfcc[b, :valid]
        expected = (item - item.mean(0)) / (item.var(0, unbiased=False) + 1e-5).sqrt()
        torch.testing.assert_close(out[b, :valid], expected)
    assert (out[1, 4:] == 0).all()
    # Padding never enters the statistics: garbage beyond item 1's length changes nothing.
    garbage = mfcc.clone()
    garbage[1, 4:] = 1e3
    assert torch.equal(utterance_cmvn(garbage, frame_lengths), out)


def test_mfcc_kmeans_utterance_normalisation(corpus, tmp_path, mfcc_dir, held_out):
    """options.cmvn=utterance: fitted and encoded on per-utterance CMVN features; the
    codes ignore a gain change (a constant log-spectrum offset), batched == alone, and
    centroids of the other normalisation are refused naming both."""
    out = fit_offline_tokenizer(
        "mfcc-kmeans", corpus, tmp_path / "cmvn", k=K, num_codebooks=1, max_frames=8000,
        seed=0, max_steps=60, progress=False, cmvn="utterance",
    )  # fmt: skip
    card = json.loads((out / "card.json").read_text())
    assert card["features"]["normalisation"].startswith("per-utterance")
    assert card["tasks"] == list(TASKS)  # no tasks given: those the corpus has (asr, sid)
    cfg = TokenizerConfig(name="mfcc-kmeans", centroids=str(out), options={"cmvn": "utterance"})
    tok = build_tokenizer(cfg)
    wav, lengths = pad_batch(held_out)
    codes, frame_lengths = tok.encode(wav, lengths)
    louder, _ = tok.encode(wav * 3.0, lengths)
    same = (codes == louder)[codes != PAD_CODE].float().mean()
    assert same > 0.97, same  # a few frames near the log floor may move
    # Corpus statistics keep the gain in c0, so those codes move with it.
    corpus_tok = build_tokenizer(TokenizerConfig(name="mfcc-kmeans", centroids=str(mfcc_dir)))
    corpus_codes, _ = corpus_tok.encode(wav, lengths)
    corpus_louder, _ = corpus_tok.encode(wav * 3.0, lengths)
    corpus_same = (corpus_codes == corpus_louder)[corpus_codes != PAD_CODE].float().mean()
    assert corpus_same < same - 0.02, (corpus_same, same)
    for b, item in enumerate(held_out):
        alone, _ = tok.encode(item[None], torch.tensor([item.numel()]))
        assert torch.equal(codes[b, :, : int(frame_lengths[b])], alone[0])
    with pytest.raises(
        ValueError,
        match="fitted on features .*per-coefficient.*this config computes .*per-utterance",
    ):
        build_tokenizer(dataclasses.replace(cfg, centroids=str(mfcc_dir)))
    with pytest.raises(
        ValueError, match=r"'options.cmvn' must be one of \['corpus', 'utterance'\]"
    ):
        build_tokenizer(dataclasses.replace(cfg, options={"cmvn": "speaker"}))
    with pytest.raises(
        ValueError,
        match=r"mel-rvq: config key 'options.cmvn' must be one of \['none', 'utterance'\]",
    ):
        build_tokenizer(
            TokenizerConfig(name="mel-rvq", centroids=str(out), options={"cmvn": "corpus"})
        )


def test_mel_rvq_utterance_normalisation(corpus, tmp_path, rvq_dir, held_out):
    """mel-rvq options.cmvn=utterance: fitted on per-utterance CMVN log-mel, with the average
    band levels of the fitted utterances stored for decoding; codes ignore a gain change,
    batched == alone, decoding rebuilds the spectrum's shape, and cards of the other
    normalisation are refused both ways."""
    out = fit_offline_tokenizer(
        "mel-rvq", corpus, tmp_path / "cmvn", k=K, num_codebooks=4, max_frames=8000,
        seed=0, tasks=("asr",), max_steps=60, progress=False, cmvn="utterance",
    )  # fmt: skip
    card = json.loads((out / "card.json").read_text())
    assert card["features"]["normalisation"].startswith("per-utterance per-band")
    assert card["tensors"] == {"codebooks": [4, K, 80], "mel_mean": [80], "mel_std": [80]}
    # The stored levels are the unweighted average over the fitted utterances of each band's
    # own mean and sd.
    means, sds = [], []
    for row in load_task(corpus, "asr")["train"]:
        wav = torch.from_numpy(decode_audio_value(row["audio"]))
        frames, _ = log_mel_frames(wav[None], torch.tensor([wav.numel()]))
        means.append(frames[0].double().mean(0))
        sds.append(frames[0].double().std(0, unbiased=False))
    tok = build_tokenizer(
        TokenizerConfig(name="mel-rvq", centroids=str(out), options={"cmvn": "utterance"})
    )
    torch.testing.assert_close(tok.mel_mean, torch.stack(means).mean(0).float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(tok.mel_std, torch.stack(sds).mean(0).float(), atol=1e-4, rtol=0)
    wav, lengths = pad_batch(held_out)
    codes, frame_lengths = tok.encode(wav, lengths)
    # First codebook under a gain of 3: bands at the log floor (about a third of these
    # eSpeak frames) do not move with the gain, so some codes still change, but far fewer
    # than for raw log-mel, where a gain shifts every band above the floor at once.
    louder, _ = tok.encode(wav * 3.0, lengths)
    same = (codes[:, 0] == louder[:, 0])[codes[:, 0] != PAD_CODE].float().mean()
    assert same > 0.85, same  # 0.90 when written
    raw = build_tokenizer(TokenizerConfig(name="mel-rvq", centroids=str(rvq_dir)))
    raw_codes, _ = raw.encode(wav, lengths)
    raw_louder, _ = raw.encode(wav * 3.0, lengths)
    raw_same = (raw_codes[:, 0] == raw_louder[:, 0])[raw_codes[:, 0] != PAD_CODE].float().mean()
    assert raw_same < 0.5, raw_same  # 0.25 for a 2-codebook raw fit on asr alone
    for b, item in enumerate(held_out):
        alone, _ = tok.encode(item[None], torch.tensor([item.numel()]))
        assert torch.equal(codes[b, :, : int(frame_lengths[b])], alone[0])
    # Decoding: the sum of the chosen centroids approximates the normalised log-mel, and is
    # scaled back with the stored corpus levels (the utterance's own level and spread are not
    # in the codes); the audio decoded from it still follows the original spectrum.
    original, _ = log_mel_frames(wav, lengths)
    normalised, _ = log_mel_frames(wav, lengths, "utterance")
    target = normalised * tok.mel_std + tok.mel_mean
    rebuilt = tok.reconstruct_log_mel(codes, frame_lengths)
    audio, audio_lengths = tok.decode(codes, frame_lengths)
    decoded, _ = log_mel_frames(audio, audio_lengths)
    for b, frames in enumerate(frame_lengths.tolist()):
        for reference, other, least in ((target, rebuilt, 0.85), (original, decoded, 0.6)):
            pair = torch.stack([reference[b, :frames].flatten(), other[b, :frames].flatten()])
            correlation = float(torch.corrcoef(pair)[0, 1])
            assert correlation > least, (b, correlation)
    with pytest.raises(
        ValueError, match="fitted on features .*this config computes .*per-utterance"
    ):
        build_tokenizer(
            TokenizerConfig(name="mel-rvq", centroids=str(rvq_dir), options={"cmvn": "utterance"})
        )
    with pytest.raises(
        ValueError, match="fitted on features .*per-utterance.*this config computes"
    ):
        build_tokenizer(TokenizerConfig(name="mel-rvq", centroids=str(out)))


def test_append_deltas_by_hand():
    """Regression deltas over +-2 frames with the edge frames repeated: a ramp 0..5 gives
    deltas 0.5 0.8 1 1 0.8 0.5 (sum_k k (x[t+k] - x[t-k]) / 10); an item of 3 frames uses
    its own frames only, whatever the padding holds."""
    features = torch.zeros(2, 6, 1, dtype=torch.float64)
    features[0, :, 0] = torch.arange(6.0)
    features[1, :, 0] = torch.tensor([0.0, 1.0, 2.0, 1e3, -1e3, 7.0])  # 3 frames + garbage
    out = append_deltas(features, torch.tensor([6, 3]))
    assert out.shape == (2, 6, 3)
    torch.testing.assert_close(out[0, :, 0], features[0, :, 0])
    torch.testing.assert_close(out[0, :, 1], torch.tensor([0.5, 0.8, 1, 1, 0.8, 0.5]).double())
    # delta-delta = the same regression over the deltas
    expected = torch.tensor([0.13, 0.15, 0.08, -0.08, -0.15, -0.13]).double()
    torch.testing.assert_close(out[0, :, 2], expected)
    torch.testing.assert_close(out[1, :3, 1], torch.tensor([0.5, 0.6, 0.5]).double())
    alone = append_deltas(features[1:, :3], torch.tensor([3]))
    torch.testing.assert_close(out[1, :3], alone[0])


def test_mfcc_kmeans_deltas(corpus, tmp_path, mfcc_dir, held_out):
    """options.deltas: 39-dim MFCC frames (static, delta, delta-delta), 78 per 50 Hz code
    frame; fitted, encoded batched == alone; centroids without deltas are refused; the
    continuous mfcc-features option of the same name keeps the static part unchanged."""
    out = fit_offline_tokenizer(
        "mfcc-kmeans", corpus, tmp_path / "deltas", k=K, num_codebooks=1, max_frames=8000,
        seed=0, max_steps=60, progress=False, cmvn="utterance", deltas=True,
    )  # fmt: skip
    card = json.loads((out / "card.json").read_text())
    assert card["features"]["deltas"].startswith("delta + delta-delta")
    assert card["tensors"]["centroids"] == [K, 78] and card["tensors"]["mfcc_mean"] == [39]
    cfg = TokenizerConfig(
        name="mfcc-kmeans", centroids=str(out), options={"cmvn": "utterance", "deltas": True}
    )
    tok = build_tokenizer(cfg)
    wav, lengths = pad_batch(held_out)
    codes, frame_lengths = tok.encode(wav, lengths)
    assert frame_lengths.tolist() == [16, 50, 39]
    for b, item in enumerate(held_out):
        alone, _ = tok.encode(item[None], torch.tensor([item.numel()]))
        assert torch.equal(codes[b, :, : int(frame_lengths[b])], alone[0])
    assert codes[1, 0].unique().numel() >= 8
    with pytest.raises(ValueError, match="fitted on features .*this config computes .*deltas"):
        build_tokenizer(dataclasses.replace(cfg, centroids=str(mfcc_dir), options={"deltas": True}))
    with pytest.raises(ValueError, match="'options.deltas' must be true or false, got 'yes'"):
        build_tokenizer(dataclasses.replace(cfg, options={"deltas": "yes"}))
    plain = build_tokenizer(TokenizerConfig(name="mfcc-features"))
    moving = build_tokenizer(TokenizerConfig(name="mfcc-features", options={"deltas": True}))
    assert (plain.num_codebooks, moving.num_codebooks) == (26, 78)
    static, _ = plain.encode(wav, lengths)  # [B, 26, F]: frame a's 13, then frame b's 13
    full, _ = moving.encode(wav, lengths)  # [B, 78, F]: frame a's 39, then frame b's 39
    torch.testing.assert_close(full[:, :13], static[:, :13])
    torch.testing.assert_close(full[:, 39:52], static[:, 13:])
    assert full[:, 13:39].abs().sum() > 0


def test_mel_rvq_deltas(corpus, tmp_path, held_out):
    """mel-rvq options.deltas: each 50 Hz frame is 80 bands + 80 deltas + 80 delta-deltas,
    all normalised per utterance and quantised together; batched == alone; decoding sums
    only the static 80 dims of the chosen centroids; centroids without deltas are refused."""
    out = fit_offline_tokenizer(
        "mel-rvq", corpus, tmp_path / "deltas", k=K, num_codebooks=2, max_frames=8000,
        seed=0, tasks=("asr",), max_steps=60, progress=False, cmvn="utterance", deltas=True,
    )  # fmt: skip
    card = json.loads((out / "card.json").read_text())
    assert card["features"]["deltas"].startswith("delta + delta-delta")
    assert card["feature_source"].startswith("80-bin log-mel (64 ms / 20 ms, 50 Hz) + deltas")
    assert card["tensors"] == {"codebooks": [2, K, 240], "mel_mean": [80], "mel_std": [80]}
    cfg = TokenizerConfig(
        name="mel-rvq", centroids=str(out), options={"cmvn": "utterance", "deltas": True}
    )
    tok = build_tokenizer(cfg)
    wav, lengths = pad_batch(held_out)
    frames, _ = log_mel_frames(wav, lengths, "utterance", deltas=True)
    static, _ = log_mel_frames(wav, lengths, "utterance")
    assert frames.shape[-1] == 240
    torch.testing.assert_close(frames[..., :80], static)  # deltas do not touch the bands
    assert frames[1, :50, 80:].std() > 0.5  # normalised per utterance like the bands
    codes, frame_lengths = tok.encode(wav, lengths)
    assert codes.shape[1] == 2 and frame_lengths.tolist() == [16, 50, 39]
    for b, item in enumerate(held_out):
        alone, _ = tok.encode(item[None], torch.tensor([item.numel()]))
        assert torch.equal(codes[b, :, : int(frame_lengths[b])], alone[0])
    # The first code is the centroid nearest in all 240 dims, not in the 80 bands alone.
    first = codes[1, 0, :50]
    full = torch.cdist(frames[1, :50].double(), tok.codebooks[0].double()).argmin(1)
    bands = torch.cdist(frames[1, :50, :80].double(), tok.codebooks[0, :, :80].double()).argmin(1)
    assert torch.equal(first, full) and not torch.equal(first, bands)
    # Decoding: the static bands of the chosen centroids, scaled back with the corpus levels.
    expected = (tok.codebooks[0][codes[1, 0]] + tok.codebooks[1][codes[1, 1]])[:50, :80]
    rebuilt = tok.reconstruct_log_mel(codes, frame_lengths)
    torch.testing.assert_close(rebuilt[1, :50], expected * tok.mel_std + tok.mel_mean)
    # The audio Griffin-Lim makes from it follows that log-mel (0.98-0.99 when written).
    audio, audio_lengths = tok.decode(codes, frame_lengths)
    decoded, _ = log_mel_frames(audio, audio_lengths)
    for b, frames_b in enumerate(frame_lengths.tolist()):
        pair = torch.stack([rebuilt[b, :frames_b].flatten(), decoded[b, :frames_b].flatten()])
        assert float(torch.corrcoef(pair)[0, 1]) > 0.9, b
    with pytest.raises(ValueError, match="fitted on features .*deltas.*this config computes"):
        build_tokenizer(dataclasses.replace(cfg, options={"cmvn": "utterance"}))


def test_mfcc_features_match_reference_mfcc(held_out):
    item = held_out[1]
    ours, frame_lengths = mfcc_frames(item[None], torch.tensor([item.numel()]))
    reference = mfcc(item).T  # centred STFT with reflect padding: 101 frames
    assert ours.shape == (1, 2 * int(frame_lengths[0]), 13) == (1, 100, 13)
    torch.testing.assert_close(ours[0], reference[:100], atol=1e-3, rtol=1e-4)


def test_rvq_error_falls_with_every_codebook(tokenizers, held_out):
    tok = tokenizers["mel-rvq"]
    wav, lengths = pad_batch(held_out)
    target, frame_lengths = log_mel_frames(wav, lengths)
    codes, _ = tok.encode(wav, lengths)
    valid = torch.arange(50)[None, :] < frame_lengths[:, None]
    errors = []
    for used in range(1, 5):
        rebuilt = tok.reconstruct_log_mel(codes[:, :used], frame_lengths)
        errors.append(float((rebuilt - target)[valid].square().mean()))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.6 * errors[0], errors


def test_decode_length_and_spectrum(tokenizers, held_out):
    tok = tokenizers["mel-rvq"]
    wav, lengths = pad_batch(held_out)
    codes, frame_lengths = tok.encode(wav, lengths)
    audio, audio_lengths = tok.decode(codes, frame_lengths)
    assert audio.shape == (3, 50 * 320) and audio.dtype == torch.float32
    assert audio_lengths.tolist() == [16 * 320, 50 * 320, 39 * 320]
    assert (audio[0, 16 * 320 :] == 0).all() and torch.isfinite(audio).all()
    original, _ = log_mel_frames(wav, lengths)
    decoded, _ = log_mel_frames(audio, audio_lengths)
    for b, frames in enumerate(frame_lengths.tolist()):
        pair = torch.stack([original[b, :frames].flatten(), decoded[b, :frames].flatten()])
        assert float(torch.corrcoef(pair)[0, 1]) > 0.8, b
    again, _ = tok.decode(codes, frame_lengths)
    assert torch.equal(audio, again), "Griffin-Lim uses a fixed seed"


def test_mfcc_kmeans_cannot_decode(tokenizers):
    with pytest.raises(NotImplementedError, match="cannot decode"):
        tokenizers["mfcc-kmeans"].decode(torch.zeros(1, 1, 3, dtype=torch.long), torch.tensor([3]))


def test_missing_centroids_errors_name_key_and_command(tmp_path):
    with pytest.raises(
        ValueError, match="config key 'centroids' is unset.*tokenizers/fit_kmeans.py"
    ):
        build_tokenizer(TokenizerConfig(name="mel-rvq"))
    with pytest.raises(
        FileNotFoundError, match=f"'centroids' names {tmp_path / 'nope'}.*fit_kmeans.py"
    ):
        build_tokenizer(TokenizerConfig(name="mfcc-kmeans", centroids=str(tmp_path / "nope")))


def test_config_mismatches_are_refused(mfcc_dir, rvq_dir):
    with pytest.raises(ValueError, match="'codebook_size' is 500 but .* k=32"):
        build_tokenizer(
            TokenizerConfig(name="mfcc-kmeans", centroids=str(mfcc_dir), codebook_size=500)
        )
    with pytest.raises(ValueError, match="fitted for 'mfcc-kmeans', not 'mel-rvq'"):
        build_tokenizer(TokenizerConfig(name="mel-rvq", centroids=str(mfcc_dir)))
    with pytest.raises(ValueError, match="'num_codebooks' is 5 but .* holds 4"):
        build_tokenizer(TokenizerConfig(name="mel-rvq", centroids=str(rvq_dir), num_codebooks=5))
    with pytest.raises(ValueError, match="mel-rvq: config key 'deduplicate' is for one codebook"):
        build_tokenizer(TokenizerConfig(name="mel-rvq", centroids=str(rvq_dir), deduplicate=True))
    with pytest.raises(ValueError, match="'mel-rvq' does not use `weights`"):
        build_tokenizer(TokenizerConfig(name="mel-rvq", centroids=str(rvq_dir), weights="x"))
    with pytest.raises(ValueError, match="'mel-rvq' does not use `layers`"):
        build_tokenizer(TokenizerConfig(name="mel-rvq", centroids=str(rvq_dir), layers=[3]))
    with pytest.raises(ValueError, match=r"options\.hop"):
        build_tokenizer(TokenizerConfig(name="mel-rvq", centroids=str(rvq_dir), options={"hop": 1}))


@pytest.mark.parametrize(
    ("name", "k", "codebooks"), [("mfcc-kmeans", 500, None), ("mel-rvq", 256, 4)]
)
def test_shipped_configs_load(name, k, codebooks):
    cfg = load_config(TokenizerConfig, ROOT / "configs" / "tokenizers" / f"{name}.yaml")
    assert (cfg.name, cfg.codebook_size, cfg.num_codebooks) == (name, k, codebooks)
    assert cfg.centroids == f"runs/tokenizers/{name}"


def _script():
    spec = importlib.util.spec_from_file_location(
        "fit_kmeans_script", ROOT / "tokenizers" / "fit_kmeans.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_script_writes_loadable_config(corpus, tmp_path, held_out):
    out = tmp_path / "mfcc"
    rc = _script().main(
        [
            "--tokenizer",
            str(ROOT / "configs/tokenizers/mfcc-kmeans.yaml"),
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--max-frames",
            "3000",
            "--tasks",
            "asr",
            "codebook_size=16",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "card.json",
        "centroids.safetensors",
        "config.yaml",
    ]
    cfg = load_config(TokenizerConfig, out / "config.yaml")
    assert (cfg.centroids, cfg.codebook_size) == (str(out), 16)
    tok = build_tokenizer(cfg)
    codes, _ = tok.encode(held_out[1][None], torch.tensor([16000]))
    assert codes.shape == (1, 1, 50) and int(codes.max()) < 16
    assert json.loads((out / "card.json").read_text())["num_frames"] <= 3000


def test_fit_script_errors(tmp_path, corpus, capsys):
    config = tmp_path / "encodec.yaml"
    config.write_text("name: encodec\nbandwidth_kbps: 6.0\n")
    assert (
        _script().main(
            ["--tokenizer", str(config), "--data", str(corpus), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "'encodec' has no k-means centroids to fit" in capsys.readouterr().err
    mfcc_config = str(ROOT / "configs/tokenizers/mfcc-kmeans.yaml")
    assert (
        _script().main(["--tokenizer", mfcc_config, "--data", str(corpus), "codebook_sise=3"]) == 2
    )
    assert "codebook_sise" in capsys.readouterr().err
