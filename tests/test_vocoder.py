"""Token vocoder: exact lengths, padding, learning, save/load, exact resume, tokenizer decode."""

import dataclasses
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmllm.config import ConfigError, load_config, save_config
from mmllm.data.cache import CachedSplit, CacheError, read_cache_card, token_cache_dir
from mmllm.tokenizers.base import PAD_CODE, TokenizerConfig, pad_batch
from mmllm.tokenizers.registry import build_tokenizer
from mmllm.tokenizers.vocoder import (
    TokenVocoder,
    VocoderConfig,
    load_vocoder,
    save_vocoder,
    tokenizer_signature,
)
from mmllm.vocoder.train import make_optimizer, train_vocoder, vocoder_losses

ROOT = Path(__file__).resolve().parents[1]
# Synthetic tests run at hop 32 (no tokenizer has it): ~1.8k parameters, milliseconds a step.
SMALL = {
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_layers": 1,
    "kernel_size": 3,
    "hop": 32,
    "n_fft": 128,
    "segment_frames": 20,
    "batch_size": 2,
    "stft_resolutions": [[64, 16], [128, 32]],
    "mel_n_fft": 128,
    "mel_hop": 32,
    "mel_bins": 16,
}
# Tokenizer-rate runs (mfcc-kmeans: 16 kHz, hop 320) on SynthDASB tiny: ~10k parameters.
TOKEN_OVERRIDES = [
    "hidden_size=8",
    "intermediate_size=16",
    "num_layers=1",
    "kernel_size=3",
    "n_fft=960",
    "segment_frames=10",
    "batch_size=2",
    "stft_resolutions=[[256, 64], [512, 128]]",
    "mel_n_fft=512",
    "mel_hop=128",
    "mel_bins=40",
    "tasks=[asr, tts]",
    "lr=3e-3",
    "warmup_steps=2",
    "steps=8",
    "checkpoint_every=3",
]


def small_model(num_codebooks: int = 2, codebook_size: int = 8, **overrides) -> TokenVocoder:
    torch.manual_seed(0)
    return TokenVocoder(VocoderConfig(**SMALL | overrides), num_codebooks, codebook_size)


def random_codes(batch: int, num_codebooks: int, frames: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        8, (batch, num_codebooks, frames), generator=torch.Generator().manual_seed(seed)
    )


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("frames", [0, 1, 2, 7])
def test_output_length_is_frames_times_hop(frames):
    model = small_model()
    wav, lengths = model.synthesize(random_codes(2, 2, frames), torch.tensor([frames, frames]))
    assert wav.shape == (2, frames * 32) and lengths.tolist() == [frames * 32] * 2


def test_tokenizer_rate_length():
    model = TokenVocoder(VocoderConfig(hidden_size=8, intermediate_size=16, num_layers=1), 1, 8)
    wav, lengths = model.synthesize(random_codes(1, 1, 5), torch.tensor([5]))
    assert wav.shape == (1, 1600) and lengths.tolist() == [1600]


def test_padding_does_not_change_the_valid_part():
    model = small_model()
    codes = random_codes(2, 2, 12)
    lengths = torch.tensor([7, 12])
    padded = codes.clone()
    padded[0, :, 7:] = PAD_CODE
    with torch.no_grad():
        batch = model(padded, lengths)
        garbage = model(codes, lengths)  # whatever the padding holds, it is ignored
        alone = model(codes[:1, :, :7], torch.tensor([7]))
    torch.testing.assert_close(batch[0, : 7 * 32], alone[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(batch, garbage)
    assert batch[0, 7 * 32 :].abs().max() == 0
    with pytest.raises(ValueError, match=r"lie in \[0, 8\)"):
        model(codes.masked_fill(codes == codes[1, 0, 0], 8), lengths)


def test_speaker_conditioning_and_unknown_speaker():
    model = small_model(speaker_conditioning=True, num_speakers=3)
    codes, lengths = random_codes(2, 2, 6), torch.tensor([6, 6])
    with torch.no_grad():
        unknown = model(codes, lengths, torch.tensor([0, 0]))
        assert torch.equal(model(codes, lengths), unknown)  # no speaker = row 0
        assert not torch.allclose(model(codes, lengths, torch.tensor([1, 2])), unknown)
    with pytest.raises(ValueError, match="speaker_conditioning"):
        small_model()(codes, lengths, torch.tensor([1, 2]))


def test_loss_falls_on_a_fixed_batch():
    cfg = VocoderConfig(**SMALL | {"lr": 1e-2, "warmup_steps": 0})
    torch.manual_seed(0)
    model = TokenVocoder(cfg, 1, 8)
    codes = random_codes(2, 1, 20)
    # target: a tone whose pitch each code sets for its frame
    freq = 200.0 + 300.0 * codes[:, 0].repeat_interleave(32, dim=1).double()
    target = (0.3 * torch.sin(2 * math.pi * freq.cumsum(1) / 16000)).float()
    optimizer = make_optimizer(model, cfg)
    losses = []
    for _ in range(40):
        loss = vocoder_losses(model(codes, torch.tensor([20, 20])), target, cfg)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_save_load_round_trip_and_codebook_weights(tmp_path):
    model = small_model(num_codebooks=3)
    with torch.no_grad():
        model.codebook_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    signature = {"name": "synthetic", "num_codebooks": 3, "codebook_size": 8}
    save_vocoder(model, tmp_path, signature, extra={"trained_steps": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocoder.json", "vocoder.safetensors"]
    card = json.loads((tmp_path / "vocoder.json").read_text())
    assert (card["num_codebooks"], card["codebook_size"], card["tokenizer"]) == (3, 8, signature)
    assert card["codebook_weights"] == pytest.approx(torch.softmax(torch.arange(3.0), 0).tolist())
    loaded = load_vocoder(tmp_path)
    codes, lengths = random_codes(2, 3, 9), torch.tensor([9, 4])
    assert torch.equal(loaded.synthesize(codes, lengths)[0], model.synthesize(codes, lengths)[0])
    assert loaded.cfg == model.cfg and loaded.codebook_weights().sum().item() == pytest.approx(1)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("kernel_size=4", "kernel_size"),
        ("n_fft=640", "n_fft"),
        ("speaker_conditioning=true", "num_speakers"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(VocoderConfig, None, [override])


def test_shipped_configs_fit_the_offline_tokenizers():
    for path in sorted((ROOT / "configs" / "vocoder").glob("*.yaml")):
        cfg = load_config(VocoderConfig, path)
        assert (cfg.sample_rate, cfg.hop) == (16000, 320), path


# ----------------------------------------------------------------------------- training


def _script():
    spec = importlib.util.spec_from_file_location(
        "train_vocoder_script", ROOT / "tokenizers" / "train_vocoder.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer_yaml(tiny_tokens, tmp_path_factory) -> Path:
    return save_config(tiny_tokens["tokenizer"], tmp_path_factory.mktemp("tok"), "tokenizer.yaml")


@pytest.fixture(scope="module")
def trained(tiny_tokens, tokenizer_yaml, tmp_path_factory) -> Path:
    """An uninterrupted 8-step run of the CLI (checkpoints at steps 3 and 6)."""
    out = tmp_path_factory.mktemp("vocoder") / "run"
    args = ["--tokenizer", str(tokenizer_yaml), "--data", str(tiny_tokens["corpus"])]
    args += ["--cache", str(tiny_tokens["cache"]), "--out", str(out)]
    assert _script().main([*args, "--no-progress", *TOKEN_OVERRIDES]) == 0
    return out


def _losses(run: Path) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_resume_after_a_stop_gives_the_same_losses(tiny_tokens, trained, tmp_path):
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == [
        "latest",
        "step-000003",
        "step-000006",
    ]
    cfg = load_config(VocoderConfig, None, TOKEN_OVERRIDES)
    where = (
        tiny_tokens["tokenizer"],
        tiny_tokens["corpus"],
        tiny_tokens["cache"],
    )
    run = tmp_path / "run"
    first = train_vocoder(cfg, *where, run, progress=False, stop_after=5)  # "killed" after 5
    assert [r["step"] for r in first] == [1, 2, 3, 4, 5] and not (run / "vocoder.json").exists()
    second = train_vocoder(cfg, *where, run, progress=False)  # resumes from step 3
    assert [r["step"] for r in second] == [4, 5, 6, 7, 8]
    assert _losses(run) == _losses(trained)  # step for step, exactly
    weights, again = (
        load_file(trained / "vocoder.safetensors"),
        load_file(run / "vocoder.safetensors"),
    )
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    with pytest.raises(ValueError, match="another vocoder config"):
        train_vocoder(dataclasses.replace(cfg, lr=1e-3), *where, run, progress=False)


def test_training_refuses_a_cache_of_another_tokenizer(tiny_tokens):
    cache, cfg = tiny_tokens["cache"], tiny_tokens["tokenizer"]
    assert read_cache_card(
        cache, dataclasses.replace(cfg, vocoder="x", device="cuda")
    )  # same codes
    with pytest.raises(CacheError, match="another tokenizer config"):
        read_cache_card(cache, dataclasses.replace(cfg, codebook_size=16))


def test_token_cache_dir_is_named_by_content(tiny_tokens, tmp_path):
    """Variants of one backend and refitted centroids get their own cache directory; the
    decode-side vocoder, the device and the centroids' location do not change it."""
    cfg, root = tiny_tokens["tokenizer"], tiny_tokens["cache_dir"]
    assert token_cache_dir(root, cfg) == tiny_tokens["cache"]
    assert token_cache_dir(root, cfg).name.startswith("mfcc-kmeans-")
    moved = shutil.copytree(cfg.centroids, tmp_path / "moved")
    same = [dataclasses.replace(cfg, vocoder="x", device="cuda", centroids=str(moved))]
    assert all(token_cache_dir(root, c) == tiny_tokens["cache"] for c in same)
    refit = shutil.copytree(cfg.centroids, tmp_path / "refit")
    tensors = load_file(refit / "centroids.safetensors")
    save_file(
        {k: v.flip(0).contiguous() for k, v in tensors.items()}, refit / "centroids.safetensors"
    )
    variants = [
        dataclasses.replace(cfg, deduplicate=True),
        dataclasses.replace(cfg, codebook_size=16),
        dataclasses.replace(cfg, centroids=str(refit)),
    ]
    names = {token_cache_dir(root, c) for c in [cfg, *variants]}
    assert len(names) == 4


# ----------------------------------------------------------------------------- decode


def _cached_batch(tiny_tokens) -> tuple[torch.Tensor, torch.Tensor]:
    split = CachedSplit(tiny_tokens["cache"] / "asr" / "test")
    items = [torch.from_numpy(split.get(key).astype("int64")) for key in split.entry_keys()[:2]]
    lengths = torch.tensor([c.shape[1] for c in items])
    codes = torch.full((2, 1, int(lengths.max())), PAD_CODE)
    for b, item in enumerate(items):
        codes[b, :, : item.shape[1]] = item
    return codes, lengths


def test_tokenizer_decode_uses_the_named_vocoder(tiny_tokens, trained):
    plain = build_tokenizer(tiny_tokens["tokenizer"])
    assert not plain.can_decode
    with pytest.raises(NotImplementedError, match="vocoder"):
        plain.decode(*_cached_batch(tiny_tokens))
    tokenizer = build_tokenizer(dataclasses.replace(tiny_tokens["tokenizer"], vocoder=str(trained)))
    assert tokenizer.can_decode and tokenizer.describe()["can_decode"]
    codes, frame_lengths = _cached_batch(tiny_tokens)
    wav, lengths = tokenizer.decode(codes, frame_lengths)
    assert wav.shape == (2, codes.shape[-1] * 320) and torch.equal(lengths, frame_lengths * 320)
    assert torch.equal(wav, load_vocoder(trained).synthesize(codes, frame_lengths)[0])


@pytest.mark.parametrize(("key", "value"), [("codebook_size", 16), ("centroids_sha256", "0" * 64)])
def test_tokenizer_refuses_a_mismatched_vocoder(tiny_tokens, trained, tmp_path, key, value):
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    card = json.loads((other / "vocoder.json").read_text())
    card["tokenizer"][key] = value
    (other / "vocoder.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=rf"vocoder {other} was trained for another.*{key}"):
        build_tokenizer(dataclasses.replace(tiny_tokens["tokenizer"], vocoder=str(other)))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no trained vocoder"):
        build_tokenizer(dataclasses.replace(tiny_tokens["tokenizer"], vocoder=str(tmp_path)))


def test_mel_rvq_decodes_with_a_named_vocoder_else_griffin_lim(synth_tiny, tmp_path):
    from mmllm.tokenizers.backends.offline_fit import fit_offline_tokenizer

    centroids = fit_offline_tokenizer(
        "mel-rvq", synth_tiny, tmp_path / "rvq", k=8, num_codebooks=2, max_frames=2000,
        seed=0, tasks=("asr",), max_steps=10, progress=False,
    )  # fmt: skip
    cfg = TokenizerConfig(name="mel-rvq", centroids=str(centroids))
    griffin_lim = build_tokenizer(cfg)
    model = TokenVocoder(VocoderConfig(hidden_size=8, intermediate_size=16, num_layers=1), 2, 8)
    save_vocoder(model, tmp_path / "voc", tokenizer_signature(cfg, griffin_lim.describe()))
    vocoded = build_tokenizer(dataclasses.replace(cfg, vocoder=str(tmp_path / "voc")))
    wav, lengths = pad_batch([torch.randn(4000) * 0.1, torch.randn(2500) * 0.1])
    codes, frame_lengths = griffin_lim.encode(wav, lengths)
    out = vocoded.decode(codes, frame_lengths)[0]
    assert torch.equal(out, model.synthesize(codes, frame_lengths)[0])
    assert not torch.allclose(out, griffin_lim.decode(codes, frame_lengths)[0])
