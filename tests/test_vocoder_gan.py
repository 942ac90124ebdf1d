"""Adversarial vocoder training: discriminator shapes, hinge and feature-matching losses by
hand, config (off by default, hash unchanged), a tiny GAN run, exact resume, clean export."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_vocoder import TOKEN_OVERRIDES, _script, tokenizer_yaml  # noqa: F401 (fixture)

from mmllm.config import ConfigError, config_hash, config_to_dict, from_dict, load_config
from mmllm.tokenizers.vocoder import AdversarialConfig, TokenVocoder, VocoderConfig, load_vocoder
from mmllm.vocoder.gan import (
    VocoderDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from mmllm.vocoder.train import DISCRIMINATOR_FILENAME, train_vocoder

# Tiny discriminators for the tokenizer-rate runs (segments of 10 frames = 3200 samples).
GAN_OVERRIDES = [
    "adversarial.start_step=2",
    "adversarial.mpd_periods=[2, 3]",
    "adversarial.mpd_channels=[4, 8]",
    "adversarial.mrd_resolutions=[[256, 64]]",
    "adversarial.mrd_channels=[4, 4]",
]


# ----------------------------------------------------------------------------- discriminators


def test_discriminator_shapes_by_hand():
    cfg = AdversarialConfig(
        mpd_periods=[2, 3], mpd_channels=[4, 8], mrd_resolutions=[[64, 16]], mrd_channels=[4, 6]
    )
    torch.manual_seed(0)
    logits, features = VocoderDiscriminator(cfg)(torch.randn(2, 100))
    shapes = [[tuple(f.shape) for f in branch] for branch in features]
    # period 2: 100 samples -> 50 rows x 2; kernel 5 stride 3 pad 2: 17 rows; last conv stride 1
    # period 3: reflect-padded to 102 -> 34 rows x 3 -> 12 rows
    # STFT 64/16: 100 // 16 + 1 = 7 frames x 33 bins; stride 2 over bins: 17, then 9
    assert shapes == [
        [(2, 4, 17, 2), (2, 8, 17, 2)],
        [(2, 4, 12, 3), (2, 8, 12, 3)],
        [(2, 4, 7, 17), (2, 6, 7, 9)],
    ]
    assert [tuple(score.shape) for score in logits] == [(2, 17 * 2), (2, 12 * 3), (2, 7 * 9)]


# ----------------------------------------------------------------------------- losses


def test_hinge_losses_by_hand():
    real = [torch.tensor([[2.0, 0.5]]), torch.tensor([[-1.0]])]
    fake = [torch.tensor([[-2.0, 0.0]]), torch.tensor([[3.0]])]
    # branch 1: real relu(1 - [2, .5]) = [0, .5] -> .25; fake relu(1 + [-2, 0]) = [0, 1] -> .5
    # branch 2: real relu(1 + 1) = 2; fake relu(1 + 3) = 4; mean over branches (.75 + 6) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(3.375)
    # generator: relu(1 - [-2, 0]) = [3, 1] -> 2; relu(1 - 3) = 0 -> mean 1
    assert generator_adversarial_loss(fake).item() == pytest.approx(1.0)
    # past the margin nothing is left to learn, on either side
    assert discriminator_loss([torch.tensor([[1.5]])], [torch.tensor([[-1.0]])]).item() == 0
    assert generator_adversarial_loss([torch.tensor([[1.0, 4.0]])]).item() == 0


def test_feature_matching_by_hand():
    real = [[torch.tensor([[1.0, 2.0], [3.0, 4.0]])], [torch.tensor([-2.0, 2.0])]]
    real = [[r.clone().requires_grad_() for r in branch] for branch in real]
    fake = [[torch.tensor([[1.0, 1.0], [3.0, 5.0]])], [torch.tensor([0.0, 0.0])]]
    fake = [[f.clone().requires_grad_() for f in branch] for branch in fake]
    # layer 1: mean|r - f| = .5, mean|r| = 2.5 -> .2; layer 2: 2 / 2 = 1; mean over layers
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx(0.6)
    loss.backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None  # real: a fixed target
    assert feature_matching_loss(real, real).item() == 0


# ----------------------------------------------------------------------------- config


def test_off_by_default_and_left_out_of_the_hash():
    plain = load_config(VocoderConfig, None, ["steps=5"])
    assert plain.adversarial is None and "adversarial" not in config_to_dict(plain)
    # the hash of a config without the section is what it was before the section existed
    values = {f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)}
    del values["adversarial"]
    assert config_to_dict(plain) == json.loads(json.dumps(values))
    on = load_config(VocoderConfig, None, ["steps=5", "adversarial={}"])
    assert on.adversarial == AdversarialConfig() and config_hash(on) != config_hash(plain)
    for cfg in (plain, on):
        assert from_dict(VocoderConfig, config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("adversarial.weight=-1", "adversarial.weight"),
        ("adversarial.mpd_channels=[]", "adversarial.mpd_channels"),
        ("adversarial.mrd_resolutions=[[64]]", "adversarial.mrd_resolutions"),
        ("adversarial.lr=0", "adversarial.lr"),
        ("adversarial.periods=[2]", "adversarial.periods"),  # unknown key
        ("adversarial.mrd_resolutions=[[32768, 512]]", "segment_frames"),  # 12800 samples
    ],
)
def test_adversarial_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(VocoderConfig, None, [override])


# ----------------------------------------------------------------------------- training


def _where(tiny_tokens):
    return (
        tiny_tokens["tokenizer"],
        tiny_tokens["corpus"],
        tiny_tokens["cache"],
    )


@pytest.fixture(scope="module")
def trained_gan(tiny_tokens, tokenizer_yaml, tmp_path_factory) -> Path:  # noqa: F811
    """An uninterrupted 8-step adversarial run of the CLI: reconstruction only for steps 1-2,
    then D and G updates; checkpoints at steps 3 and 6."""
    out = tmp_path_factory.mktemp("vocoder_gan") / "run"
    args = ["--tokenizer", str(tokenizer_yaml), "--data", str(tiny_tokens["corpus"])]
    args += ["--cache", str(tiny_tokens["cache"]), "--out", str(out)]
    assert _script().main([*args, "--no-progress", *TOKEN_OVERRIDES, *GAN_OVERRIDES]) == 0
    return out


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_adversarial_run_trains_generator_and_discriminators(trained_gan):
    records = _records(trained_gan)
    gan_keys = {"d_loss", "d_grad_norm", "adversarial", "feature_matching", "reconstruction"}
    assert [r["step"] for r in records] == list(range(1, 9))
    assert not gan_keys & set(records[0]) and not gan_keys & set(records[1])  # warm-up
    assert all(gan_keys <= set(r) for r in records[2:])
    assert len({r["d_loss"] for r in records[2:]}) == 6  # the discriminator loss moves
    for r in records[2:]:  # loss = reconstruction + 0.1 adversarial + 0.2 feature matching
        total = r["reconstruction"] + 0.1 * r["adversarial"] + 0.2 * r["feature_matching"]
        assert r["loss"] == pytest.approx(total, rel=1e-5)
    # both networks move between the checkpoints of steps 3 and 6
    early, late = (trained_gan / "checkpoints" / f"step-00000{s}" for s in (3, 6))
    for name in ("model.safetensors", DISCRIMINATOR_FILENAME):
        before, after = load_file(early / name), load_file(late / name)
        assert before.keys() == after.keys()
        assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2, name


def test_adversarial_resume_after_a_stop_is_exact(tiny_tokens, trained_gan, tmp_path):
    cfg = load_config(VocoderConfig, None, [*TOKEN_OVERRIDES, *GAN_OVERRIDES])
    run = tmp_path / "run"
    first = train_vocoder(cfg, *_where(tiny_tokens), run, progress=False, stop_after=5)
    assert [r["step"] for r in first] == [1, 2, 3, 4, 5]
    assert (run / "checkpoints" / "step-000003" / DISCRIMINATOR_FILENAME).is_file()
    second = train_vocoder(cfg, *_where(tiny_tokens), run, progress=False)  # from step 3
    assert [r["step"] for r in second] == [4, 5, 6, 7, 8]
    assert _records(run) == _records(trained_gan)  # every loss, d_loss and norm, exactly
    for name in ("vocoder.safetensors", f"checkpoints/step-000006/{DISCRIMINATOR_FILENAME}"):
        ours, theirs = load_file(run / name), load_file(trained_gan / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(ValueError, match="another vocoder config"):  # GAN on/off is a new run
        train_vocoder(dataclasses.replace(cfg, adversarial=None), *_where(tiny_tokens), run)


def test_exported_vocoder_has_no_discriminator(trained_gan):
    assert not (trained_gan / DISCRIMINATOR_FILENAME).exists()
    exported = load_file(trained_gan / "vocoder.safetensors")
    model = load_vocoder(trained_gan)
    assert set(exported) == set(model.state_dict())  # the generator's tensors, nothing else
    bare = TokenVocoder(dataclasses.replace(model.cfg, adversarial=None), 1, 32)
    assert set(bare.state_dict()) == set(exported)
    assert model.cfg.adversarial.mpd_periods == [2, 3]  # the card keeps how it was trained
