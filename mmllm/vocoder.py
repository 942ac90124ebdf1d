"""Token vocoders: discrete codes -> waveform, for tokenizers without a decoder (step 5).

mfcc-kmeans and the SSL k-means tokenizers keep what is said and drop the rest, so nothing
can invert them exactly; a vocoder learns the inverse from (codes, audio) pairs of the
token cache. The model is Vocos-style (Siuzdak 2023, "Vocos: closing the gap between
time-domain and Fourier-based neural vocoders"):

    codes [B, K, F] -> one embedding table per codebook, mixed with learned softmax
    weights over the K codebooks (`codebook_weights()`, [K]) -> conv k=7 -> ConvNeXt 1D
    blocks, all at the code frame rate -> linear head: per frame, log-magnitude and phase
    of n_fft // 2 + 1 bins -> inverse STFT with hop = samples per code frame (320 at
    16 kHz / 50 Hz) -> wav [B, F * hop]

The iSTFT runs at the code frame rate (n_fft = 4 x hop by default: 1280 at hop 320), so
no upsampling layer is needed and the output length is exactly F * hop. Frame f is centred
on sample f * hop, the tokenizers' convention (mmllm.tokenizers.backends.offline).

Padding: frames at or beyond `frame_lengths` (PAD_CODE) read code 0's embedding, are
zeroed after every layer (so a convolution sees them exactly as the zero padding of an
item alone), get zero magnitude, and the overlap-add normalisation counts an item's own
frames only: the valid part of a padded batch equals decoding each item alone.

Training (`train_vocoder`): random aligned segments of (cached codes, audio) pairs, AdamW,
multi-resolution STFT loss (spectral convergence + log-magnitude L1) plus a log-mel L1.
By default no adversarial losses: the audio is intelligible but smoother and more buzzy
than a GAN-trained Vocos. The optional `adversarial` section adds multi-period and
multi-resolution spectrogram discriminators, hinge and feature-matching losses
(mmllm.vocoder_gan); they live in the checkpoints only, never in the exported vocoder.

Saved as `vocoder.safetensors` + `vocoder.json` (config, the tokenizer it was trained
for, codebook weights, speakers); loaded with safetensors only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmllm.audio import log_mel
from mmllm.config import OMIT_WHEN_NONE, config_dataclass, config_hash, config_to_dict, from_dict
from mmllm.fileio import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_text,
    publish_checkpoint,
    read_latest,
    state_dict_bytes,
    step_dir,
    truncate_jsonl,
)
from mmllm.training import lr_multiplier

if TYPE_CHECKING:
    from mmllm.vocoder_gan import AdversarialTraining

WEIGHTS_FILENAME = "vocoder.safetensors"
CARD_FILENAME = "vocoder.json"
FORMAT_VERSION = 1
UNKNOWN_SPEAKER = 0  # speaker-embedding row of "no speaker given" (decode, speaker dropout)
LOSS_LOG_FLOOR = 1e-5  # log-magnitude / log-mel floor of the losses: silence must not dominate


def _default_tasks() -> list[str]:
    # Clean single-speaker speech only: se/ss inputs are noisy or mixed, ks has noise added.
    return ["asr", "tts", "sid", "ic", "er", "sv"]


def _default_resolutions() -> list[list[int]]:
    return [[256, 64], [512, 128], [1024, 256], [2048, 512]]


@config_dataclass
class AdversarialConfig:
    """VocoderConfig.adversarial: discriminators and GAN losses (mmllm.vocoder_gan).

    weight, feature_matching_weight: of the generator's hinge and feature-matching losses,
                        added to the reconstruction loss (each a mean over branches; the
                        defaults are a starting point, not tuned)
    start_step:         steps 1..start_step train on the reconstruction losses alone (a
                        warm-up: discriminators fed noise-like early output learn little)
    lr:                 discriminator lr (null = the generator's); same betas, weight
                        decay, grad_clip and warmup + cosine schedule as the generator
    mpd_periods, mpd_channels: multi-period discriminator: one branch per period, conv
                        widths of its layers (kernel (5, 1), stride 3 but the last)
    mrd_resolutions, mrd_channels: multi-resolution spectrogram discriminator: one branch
                        per [n_fft, hop], conv widths of its layers (kernel (3, 9), stride
                        2 over frequency)
    Widths are small by default so that CPU training stays feasible (HiFi-GAN's MPD goes
    to 1024 channels; Vocos's MRD uses 32).
    """

    weight: float = 0.1
    feature_matching_weight: float = 0.2
    start_step: int = 0
    lr: float | None = None
    mpd_periods: list[int] = dataclasses.field(default_factory=lambda: [2, 3, 5, 7, 11])
    mpd_channels: list[int] = dataclasses.field(default_factory=lambda: [8, 16, 32, 32])
    mrd_resolutions: list[list[int]] = dataclasses.field(
        default_factory=lambda: [[512, 128], [1024, 256], [2048, 512]]
    )
    mrd_channels: list[int] = dataclasses.field(default_factory=lambda: [8, 16, 16])

    def __post_init__(self) -> None:
        def fail(key: str, why: str) -> None:
            raise ValueError(f"key 'adversarial.{key}': {why}")

        for key in ("weight", "feature_matching_weight", "start_step"):
            if getattr(self, key) < 0:
                fail(key, f"must be >= 0, got {getattr(self, key)}")
        if self.weight == 0 and self.feature_matching_weight == 0:
            fail("weight", "weight and feature_matching_weight are both 0 (use adversarial: null)")
        if self.lr is not None and self.lr <= 0:
            fail("lr", f"must be > 0 (or null), got {self.lr}")
        if not self.mpd_periods and not self.mrd_resolutions:
            fail("mpd_periods", "no discriminator: mpd_periods and mrd_resolutions are both empty")
        if any(p < 1 for p in self.mpd_periods):
            fail("mpd_periods", f"periods must be >= 1, got {self.mpd_periods}")
        if any(len(pair) != 2 or pair[0] < 2 or pair[1] < 1 for pair in self.mrd_resolutions):
            fail(
                "mrd_resolutions",
                f"expected [n_fft >= 2, hop >= 1] pairs, got {self.mrd_resolutions}",
            )
        for key in ("mpd_channels", "mrd_channels"):
            widths = getattr(self, key)
            if not widths or min(widths) < 1:
                fail(key, f"expected a non-empty list of widths >= 1, got {widths}")


@config_dataclass
class VocoderConfig:
    """A token vocoder and how it is trained (configs/vocoder/*.yaml).

    model
      hidden_size, intermediate_size, num_layers: ConvNeXt blocks at the code frame rate
      kernel_size:        depthwise convolution width, in code frames (odd)
      sample_rate, hop:   output rate and samples per code frame (16000 / 50 Hz = 320);
                          must match the tokenizer
      n_fft:              iSTFT window (>= 3 x hop so every sample is well covered)
      max_log_magnitude:  predicted log-magnitudes are clipped here before exp (ln 1000)
      speaker_conditioning, num_speakers: add a learned speaker embedding (row 0 = unknown
                          speaker, used at decode time and for `speaker_dropout` of steps)
    data
      tasks, split:       which rows of the corpus (their `audio` column) train it
      segment_frames:     code frames per training segment (40 = 0.8 s)
      batch_size:         segments per step
    optimisation
      steps, lr, betas, weight_decay, warmup_steps (linear), then cosine to lr x min_lr_ratio
      grad_clip:          max global gradient norm (0 = off)
    losses
      stft_resolutions:   [n_fft, hop] pairs of the multi-resolution STFT loss (Hann)
      mel_n_fft, mel_hop, mel_bins: the log-mel L1 loss (mmllm.audio.log_mel)
      mel_weight, spectral_convergence_weight, log_magnitude_weight
    adversarial:          null (default: no GAN) or an AdversarialConfig section; `{}` turns
                          it on with its defaults. Left out of the config hash while null
    run
      checkpoint_every, keep_checkpoints, log_every (progress bar refresh), seed
    """

    hidden_size: int = 192
    intermediate_size: int = 576
    num_layers: int = 6
    kernel_size: int = 7
    sample_rate: int = 16000
    hop: int = 320
    n_fft: int = 1280
    max_log_magnitude: float = 6.9
    speaker_conditioning: bool = False
    num_speakers: int = 0
    speaker_dropout: float = 0.1
    tasks: list[str] = dataclasses.field(default_factory=_default_tasks)
    split: str = "train"
    segment_frames: int = 40
    batch_size: int = 16
    steps: int = 2000
    lr: float = 1e-3
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.8, 0.99])
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    stft_resolutions: list[list[int]] = dataclasses.field(default_factory=_default_resolutions)
    mel_n_fft: int = 1024
    mel_hop: int = 256
    mel_bins: int = 80
    mel_weight: float = 1.0
    spectral_convergence_weight: float = 1.0
    log_magnitude_weight: float = 1.0
    adversarial: AdversarialConfig | None = dataclasses.field(default=None, metadata=OMIT_WHEN_NONE)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"key 'kernel_size': must be odd, got {self.kernel_size}")
        if self.n_fft % 2 or self.n_fft < 3 * self.hop:
            raise ValueError(
                f"key 'n_fft': must be even and >= 3 x hop ({3 * self.hop}), got {self.n_fft}"
            )
        if self.speaker_conditioning and self.num_speakers < 1:
            raise ValueError("key 'num_speakers': must be >= 1 with speaker_conditioning")
        for name in ("hidden_size", "intermediate_size", "hop", "segment_frames", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"key {name!r}: must be >= 1, got {getattr(self, name)}")
        if any(len(pair) != 2 for pair in self.stft_resolutions):
            raise ValueError("key 'stft_resolutions': expected [n_fft, hop] pairs")
        discriminator = self.adversarial.mrd_resolutions if self.adversarial else []
        widest = max([self.mel_n_fft, *(n for n, _ in [*self.stft_resolutions, *discriminator])])
        if self.segment_frames * self.hop <= widest // 2:
            raise ValueError(
                f"key 'segment_frames': segments of {self.segment_frames * self.hop} samples are "
                f"too short for the loss and discriminator STFTs (reflect padding of "
                f"{widest // 2} samples)"
            )


# ----------------------------------------------------------------------------- model


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> Linear -> GELU -> Linear, layer-scaled residual.
    x [B, F, H] -> [B, F, H]."""

    def __init__(self, dim: int, intermediate: int, kernel_size: int, layer_scale: float):
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, intermediate)
        self.down = nn.Linear(intermediate, dim)
        self.scale = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x.transpose(1, 2)).transpose(1, 2)
        return x + self.scale * self.down(F.gelu(self.up(self.norm(y))))


def frame_mask(frame_lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """frame_lengths [B] -> bool [B, num_frames], True on each item's own frames."""
    frames = torch.arange(num_frames, device=frame_lengths.device)
    return frames[None, :] < frame_lengths[:, None]


class TokenVocoder(nn.Module):
    """codes [B, K, F] (+ frame_lengths [B], optional speakers [B]) -> wav [B, F * hop]."""

    def __init__(self, cfg: VocoderConfig, num_codebooks: int, codebook_size: int) -> None:
        super().__init__()
        self.cfg, self.num_codebooks, self.codebook_size = cfg, num_codebooks, codebook_size
        hidden = cfg.hidden_size
        # One table for all codebooks: codebook k's code c is row k * codebook_size + c.
        self.embeddings = nn.Embedding(num_codebooks * codebook_size, hidden)
        self.register_buffer(
            "offsets", torch.arange(num_codebooks) * codebook_size, persistent=False
        )
        self.codebook_logits = nn.Parameter(torch.zeros(num_codebooks))
        self.speaker_embedding = (
            nn.Embedding(cfg.num_speakers + 1, hidden) if cfg.speaker_conditioning else None
        )
        self.input_conv = nn.Conv1d(hidden, hidden, cfg.kernel_size, padding=cfg.kernel_size // 2)
        self.input_norm = nn.LayerNorm(hidden)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(hidden, cfg.intermediate_size, cfg.kernel_size, 1.0 / cfg.num_layers)
            for _ in range(cfg.num_layers)
        )
        self.output_norm = nn.LayerNorm(hidden)
        self.num_bins = cfg.n_fft // 2 + 1
        self.head = nn.Linear(hidden, 2 * self.num_bins)
        self.register_buffer(
            "window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False
        )

    def codebook_weights(self) -> torch.Tensor:
        """[K] softmax weights with which the codebooks' embeddings are mixed (sum to 1)."""
        return torch.softmax(self.codebook_logits, dim=0)

    def spectrum(
        self, codes: torch.Tensor, valid: torch.Tensor, speakers: torch.Tensor | None = None
    ) -> torch.Tensor:
        """codes [B, K, F], valid [B, F] bool -> complex STFT frames [B, n_fft // 2 + 1, F]
        (zero on invalid frames)."""
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise ValueError(
                f"vocoder: codes must be [B, K={self.num_codebooks}, F], got {tuple(codes.shape)}"
            )
        inside = codes.masked_fill(~valid[:, None, :], 0)  # PAD_CODE -> code 0: a valid row
        if inside.numel() and (int(inside.min()) < 0 or int(inside.max()) >= self.codebook_size):
            raise ValueError(
                f"vocoder: codes within frame_lengths must lie in [0, {self.codebook_size})"
            )
        mask = valid[..., None].to(self.window.dtype)  # [B, F, 1]
        embedded = self.embeddings(inside + self.offsets[None, :, None])  # [B, K, F, H]
        x = torch.einsum("bkfh,k->bfh", embedded, self.codebook_weights())
        if self.speaker_embedding is not None:
            if speakers is None:  # decode without a speaker: the row speaker dropout trains
                speakers = codes.new_full((codes.shape[0],), UNKNOWN_SPEAKER)
            x = x + self.speaker_embedding(speakers)[:, None, :]
        elif speakers is not None:
            raise ValueError("vocoder: speakers given, but it has no speaker_conditioning")
        # Zero invalid frames before every convolution: they then act as the zero padding
        # an item decoded alone gets, so padding never leaks into the valid frames.
        x = self.input_conv((x * mask).transpose(1, 2)).transpose(1, 2)
        x = self.input_norm(x) * mask
        for block in self.blocks:
            x = block(x) * mask
        log_magnitude, phase = self.head(self.output_norm(x)).transpose(1, 2).chunk(2, dim=1)
        magnitude = torch.exp(log_magnitude.clamp(max=self.cfg.max_log_magnitude))
        magnitude = magnitude * mask.transpose(1, 2)
        return torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))

    def istft(self, spec: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """complex [B, n_fft // 2 + 1, F], valid [B, F] -> wav [B, F * hop].

        Windowed overlap-add with frame f centred on sample f * hop, divided by the
        overlap of squared windows of each item's own frames (torch.istft divides by the
        overlap of all F frames, which would let padding change an item's last samples).
        """
        n_fft, hop = self.cfg.n_fft, self.cfg.hop
        batch, _, num_frames = spec.shape
        if num_frames == 0:
            return spec.real.new_zeros(batch, 0)
        frames = torch.fft.irfft(spec, n=n_fft, dim=1) * self.window[None, :, None]
        total = (num_frames - 1) * hop + n_fft
        fold = {"output_size": (1, total), "kernel_size": (1, n_fft), "stride": (1, hop)}
        wav = F.fold(frames, **fold)[:, 0, 0]  # [B, total]
        weights = self.window.square()[None, :, None] * valid[:, None, :].to(frames.dtype)
        envelope = F.fold(weights, **fold)[:, 0, 0]
        keep = slice(n_fft // 2, n_fft // 2 + num_frames * hop)
        wav, envelope = wav[:, keep], envelope[:, keep]
        # Every valid sample has envelope >= ~0.25 (n_fft >= 3 hop); past the last window, 0.
        return torch.where(envelope > 1e-6, wav / envelope.clamp(min=1e-6), 0.0)

    def forward(
        self,
        codes: torch.Tensor,
        frame_lengths: torch.Tensor,
        speakers: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """codes [B, K, F] int64, frame_lengths [B], speakers [B] (0 = unknown) or None ->
        wav [B, F * hop]; samples at or beyond frame_lengths[b] * hop are 0."""
        if codes.shape[-1] == 0:
            return self.window.new_zeros(codes.shape[0], 0)
        frame_lengths = frame_lengths.to(codes.device)
        valid = frame_mask(frame_lengths, codes.shape[-1])
        wav = self.istft(self.spectrum(codes, valid, speakers), valid)
        # an item's last window reaches past its end: cut at frame_lengths * hop
        return wav * frame_mask(frame_lengths * self.cfg.hop, wav.shape[-1])

    @torch.no_grad()
    def synthesize(
        self,
        codes: torch.Tensor,
        frame_lengths: torch.Tensor,
        speakers: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokenizer `decode` contract: codes [B, K, F] (PAD_CODE beyond frame_lengths)
        -> (wav [B, F * hop] on codes' device, lengths [B] = frame_lengths * hop)."""
        device = self.window.device
        frame_lengths = torch.as_tensor(frame_lengths).long()
        spk = None if speakers is None else speakers.to(device)
        wav = self(codes.to(device).long(), frame_lengths.to(device), spk)
        return wav.to(codes.device), frame_lengths.to(codes.device) * self.cfg.hop


# ----------------------------------------------------------------------------- losses


def _magnitude(wav: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """wav [B, T] -> STFT magnitude [B, n_fft // 2 + 1, frames] (centred, Hann)."""
    window = torch.hann_window(n_fft, periodic=True, device=wav.device, dtype=wav.dtype)
    spec = torch.stft(wav, n_fft, hop, window=window, center=True, return_complex=True)
    # clamp before sqrt: d sqrt / dx is infinite at 0
    return (spec.real.square() + spec.imag.square()).clamp(min=1e-12).sqrt()


def vocoder_losses(
    predicted: torch.Tensor, target: torch.Tensor, cfg: VocoderConfig
) -> dict[str, torch.Tensor]:
    """predicted, target: wav [B, T] -> {"loss", "mel", "spectral_convergence",
    "log_magnitude"} (scalars; the last two averaged over `cfg.stft_resolutions`).

    spectral convergence = ||S - S'||_F / ||S||_F, log-magnitude = mean |log S - log S'|
    (Yamamoto et al. 2020, Parallel WaveGAN); mel = mean |log-mel - log-mel'| (natural-log
    mel power, HiFi-GAN / Vocos). Both logs are floored at LOSS_LOG_FLOOR.
    """
    convergence, log_magnitude = [], []
    for n_fft, hop in cfg.stft_resolutions:
        true, pred = _magnitude(target, n_fft, hop), _magnitude(predicted, n_fft, hop)
        convergence.append(torch.linalg.norm(true - pred) / torch.linalg.norm(true).clamp(min=1e-8))
        log_magnitude.append(
            (true.clamp(min=LOSS_LOG_FLOOR).log() - pred.clamp(min=LOSS_LOG_FLOOR).log())
            .abs()
            .mean()
        )
    mel_args = (cfg.sample_rate, cfg.mel_n_fft, cfg.mel_hop, cfg.mel_bins)
    mel = (
        (
            log_mel(predicted, *mel_args, floor=LOSS_LOG_FLOOR)
            - log_mel(target, *mel_args, floor=LOSS_LOG_FLOOR)
        )
        .abs()
        .mean()
    )
    out = {
        "mel": mel,
        "spectral_convergence": torch.stack(convergence).mean(),
        "log_magnitude": torch.stack(log_magnitude).mean(),
    }
    out["loss"] = (
        cfg.mel_weight * out["mel"]
        + cfg.spectral_convergence_weight * out["spectral_convergence"]
        + cfg.log_magnitude_weight * out["log_magnitude"]
    )
    return out


# ----------------------------------------------------------------------------- save / load


def centroids_digest(centroids: str | None) -> str | None:
    """sha256 of a k-means tokenizer's centroids.safetensors (None without centroids): two
    k-means fits with the same k give unrelated codes, so a vocoder is tied to one fit."""
    if not centroids:
        return None
    from mmllm.tokenizers.kmeans import CENTROIDS_FILENAME

    path = Path(centroids) / CENTROIDS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: centroids not found (needed to identify the codes)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokenizer_signature(tokenizer_cfg: Any, properties: dict[str, Any]) -> dict[str, Any]:
    """What a vocoder's codes mean: tokenizer name, rates, codebook layout and centroids.
    `properties` is AudioTokenizer.describe() (or a token cache card's copy of it)."""
    return {
        "name": properties["name"],
        "sample_rate": int(properties["sample_rate"]),
        "frame_rate_hz": float(properties["frame_rate_hz"]),
        "num_codebooks": int(properties["num_codebooks"]),
        "codebook_size": int(properties["codebook_size"]),
        "layers": list(tokenizer_cfg.layers),
        "deduplicate": bool(tokenizer_cfg.deduplicate),
        "centroids_sha256": centroids_digest(tokenizer_cfg.centroids),
    }


def save_vocoder(
    model: TokenVocoder,
    directory: str | Path,
    tokenizer: dict[str, Any],
    speakers: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write directory/vocoder.safetensors, then directory/vocoder.json (the card, last: a
    directory with a card always has its weights). `tokenizer` is tokenizer_signature()."""
    directory = Path(directory)
    card = {
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(model.cfg),
        "tokenizer": tokenizer,
        "num_codebooks": model.num_codebooks,
        "codebook_size": model.codebook_size,
        "codebook_weights": model.codebook_weights().detach().cpu().tolist(),
        "speakers": list(speakers or []),
        **(extra or {}),
    }
    atomic_write_bytes(directory / WEIGHTS_FILENAME, state_dict_bytes(model.state_dict()))
    atomic_write_text(directory / CARD_FILENAME, json.dumps(card, indent=1) + "\n")
    return directory


def read_card(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    for name in (CARD_FILENAME, WEIGHTS_FILENAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory}: no trained vocoder here (missing {name}); train one with "
                f"python tokenizers/train_vocoder.py"
            )
    card = json.loads((directory / CARD_FILENAME).read_text())
    if card.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory}: vocoder format version {card.get('format_version')!r}, this version "
            f"of mmllm reads {FORMAT_VERSION}"
        )
    return card


def load_vocoder(directory: str | Path, device: str | torch.device = "cpu") -> TokenVocoder:
    """Read what save_vocoder wrote -> TokenVocoder in eval mode (its card as `.card`)."""
    from safetensors.torch import load_file

    card = read_card(directory)
    cfg = from_dict(VocoderConfig, card["config"], source=str(Path(directory) / CARD_FILENAME))
    model = TokenVocoder(cfg, card["num_codebooks"], card["codebook_size"])
    model.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILENAME)))
    model.card = card
    return model.to(device).eval()


def check_signature(card: dict[str, Any], expected: dict[str, Any], directory: str | Path) -> None:
    """Refuse a vocoder trained for another tokenizer or codebook layout, naming both."""
    found = card.get("tokenizer", {})
    differs = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
    if differs:
        details = ", ".join(
            f"{k}: vocoder {a!r} vs tokenizer {b!r}" for k, (a, b) in differs.items()
        )
        raise ValueError(
            f"vocoder {directory} was trained for another tokenizer or codebook layout "
            f"({details}); train one for this tokenizer with python tokenizers/train_vocoder.py"
        )


def load_vocoder_for(tokenizer: Any, directory: str | Path) -> TokenVocoder:
    """Load the vocoder named by a tokenizer's config `vocoder`, checked against it."""
    if tokenizer.cfg.deduplicate:
        raise ValueError(
            f"tokenizer {tokenizer.name!r}: a vocoder needs one code per frame, but "
            f"`deduplicate` collapses frames (vocoder {directory})"
        )
    card = read_card(directory)
    check_signature(card, tokenizer_signature(tokenizer.cfg, tokenizer.describe()), directory)
    return load_vocoder(directory, tokenizer.cfg.device)


# ----------------------------------------------------------------------------- training data


def check_cache(cache_dir: str | Path, tokenizer_cfg: Any) -> dict[str, Any]:
    """The card of a token cache built by `tokenizer_cfg` (vocoder and device aside: they
    do not change the codes); a cache of another tokenizer config is refused."""
    from mmllm.data.cache import CACHE_CARD, CacheError, codes_hash
    from mmllm.tokenizers.base import TokenizerConfig

    path = Path(cache_dir) / CACHE_CARD
    if not path.is_file():
        raise CacheError(
            f"{cache_dir}: no token cache here (missing {CACHE_CARD}); run tokenizers/extract.py"
        )
    card = json.loads(path.read_text())

    built = from_dict(TokenizerConfig, card["tokenizer"], source=str(path))
    if codes_hash(built) != codes_hash(tokenizer_cfg):
        raise CacheError(
            f"{cache_dir}: token cache was built with another tokenizer config "
            f"({config_to_dict(built)}), not {config_to_dict(tokenizer_cfg)}"
        )
    return card


# Code frames a tokenizer may give below ceil(samples / hop): the SSL k-means tokenizers
# give floor((T - 400) / 320) + 1 (mmllm.tokenizers.backends.ssl), 1 or 2 below.
MAX_DROPPED_FRAMES = 2


class SegmentSampler:
    """Random aligned (codes, audio) segments of a SynthDASB-layout corpus and its cache.

    Rows: the `audio` stream of `tasks` x `split` with at least `segment_frames` code
    frames (codes from CachedSplit(cache_dir/task/split), audio decoded from the corpus
    row on every draw: nothing is held in memory but the index). A segment of code frames
    [s, s + L) pairs with samples [s * hop, (s + L) * hop) (zero-padded past the end).
    An entry of T samples has ceil(T / hop) frames, or up to MAX_DROPPED_FRAMES fewer: the
    SSL tokenizers' conv encoders drop the last frames whose receptive field (400 samples
    at hop 320) would pass the end, and their frame f covers samples [f * hop, f * hop +
    400), a fixed offset the vocoder learns like any other.
    """

    def __init__(
        self, data_dir: str | Path, cache_dir: str | Path, cache_card: dict, cfg: VocoderConfig
    ) -> None:
        from mmllm.data.cache import CachedSplit, CacheError
        from mmllm.data.synth import load_task

        self.cfg = cfg
        self.datasets, self.caches, self.row_speakers = [], [], []
        self.items: list[tuple[int, int, str, int]] = []  # (task index, row, key, frames)
        fingerprints = cache_card["corpus"]["fingerprints"]
        for t, task in enumerate(cfg.tasks):
            splits = load_task(data_dir, task)
            if cfg.split not in splits:
                raise KeyError(f"{data_dir}/{task}: no split {cfg.split!r} (has {list(splits)})")
            rows = splits[cfg.split]
            if fingerprints.get(task, {}).get(cfg.split) != rows._fingerprint:
                raise CacheError(
                    f"{cache_dir}: token cache of {task}/{cfg.split} was not built from "
                    f"{data_dir} (corpus fingerprint differs)"
                )
            cached = CachedSplit(Path(cache_dir) / task / cfg.split)
            self.datasets.append(rows.select_columns(["id", "audio"]))
            self.row_speakers.append(rows["speaker"])
            self.caches.append(cached)
            self.items += [
                (t, e["row"], e["key"], e["frames"])
                for e in cached.entries
                if e["stream"] == "audio" and e["frames"] >= cfg.segment_frames
            ]
        if not self.items:
            raise ValueError(
                f"{data_dir}: no rows of {cfg.tasks}/{cfg.split} with >= {cfg.segment_frames} code frames"
            )
        self.speakers = sorted({s for column in self.row_speakers for s in column if s})
        self.speaker_index = {name: i + 1 for i, name in enumerate(self.speakers)}

    def sample(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (codes [B, K, L] int64, wav [B, L * hop] float32, speakers [B] int64, 0 =
        unknown: no speaker, or dropped with probability cfg.speaker_dropout)."""
        from mmllm.audio import decode_audio_value
        from mmllm.data.cache import CacheError

        length, hop = self.cfg.segment_frames, self.cfg.hop
        codes, wavs, speakers = [], [], []
        for pick in torch.randint(len(self.items), (batch_size,), generator=generator).tolist():
            t, row, key, frames = self.items[pick]
            start = int(torch.randint(frames - length + 1, (1,), generator=generator))
            dropped = float(torch.rand(1, generator=generator)) < self.cfg.speaker_dropout
            record = self.datasets[t][row]
            wav = decode_audio_value(record["audio"], self.cfg.sample_rate, name=key)
            short = math.ceil(wav.size / hop) - frames
            if record["id"] != key or not 0 <= short <= MAX_DROPPED_FRAMES:
                raise CacheError(
                    f"cache entry {key!r} ({frames} frames) does not match corpus row {row} "
                    f"({record['id']!r}, {wav.size} samples: ceil(samples / {hop}) frames, or "
                    f"up to {MAX_DROPPED_FRAMES} fewer); rebuild the token cache"
                )
            segment = torch.zeros(length * hop)
            piece = torch.from_numpy(wav[start * hop : (start + length) * hop])
            segment[: piece.numel()] = piece
            wavs.append(segment)
            codes.append(
                torch.from_numpy(
                    self.caches[t].get(key)[:, start : start + length].astype(np.int64)
                )
            )
            speaker = self.speaker_index.get(self.row_speakers[t][row], UNKNOWN_SPEAKER)
            speakers.append(UNKNOWN_SPEAKER if dropped else speaker)
        return torch.stack(codes).long(), torch.stack(wavs), torch.tensor(speakers)


# ----------------------------------------------------------------------------- training loop

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
DISCRIMINATOR_FILENAME = "discriminator.safetensors"  # checkpoints only, never exported


def make_optimizer(
    model: nn.Module, cfg: VocoderConfig, lr: float | None = None
) -> torch.optim.AdamW:
    """AdamW (lr: cfg.lr unless given); no weight decay on vectors (norms, biases, layer
    scales, codebook logits)."""
    groups = [
        {
            "params": [p for p in model.parameters() if p.dim() >= 2],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr if lr is None else lr, betas=tuple(cfg.betas))


def save_checkpoint(
    out: Path,
    step: int,
    model: TokenVocoder,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    keep: int,
    adversarial: AdversarialTraining | None = None,
) -> Path:
    """Full training state of `step` in a temporary directory renamed into place, then
    `latest` pointed at it: a kill at any moment leaves the previous checkpoint usable.
    With `adversarial`, the discriminators (discriminator.safetensors) and their optimizer
    (in trainer.pt) too."""
    final = step_dir(out / CHECKPOINTS, step)
    with atomic_directory(final) as tmp:
        (tmp / "model.safetensors").write_bytes(state_dict_bytes(model.state_dict()))
        trainer = {"optimizer": optimizer.state_dict(), "generator": generator.get_state()}
        if adversarial is not None:
            weights = state_dict_bytes(adversarial.discriminator.state_dict())
            (tmp / DISCRIMINATOR_FILENAME).write_bytes(weights)
            trainer["discriminator_optimizer"] = adversarial.optimizer.state_dict()
        torch.save(trainer, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}))
    publish_checkpoint(final, keep, complete=Path.is_dir)  # atomic_directory: whole or absent
    return final


def load_checkpoint(
    out: Path,
    model: TokenVocoder,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    adversarial: AdversarialTraining | None = None,
) -> int:
    """Restore the checkpoint `latest` names (if any) -> its step (0 without one)."""
    from safetensors.torch import load_file

    root = out / CHECKPOINTS
    for stale in root.glob(".step-*"):  # what a kill during a save leaves behind
        shutil.rmtree(stale, ignore_errors=True)
    path = read_latest(root)
    if path is None:
        return 0
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
    trainer = torch.load(path / "trainer.pt", map_location=device, weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    generator.set_state(trainer["generator"].cpu())
    if adversarial is not None:
        if not (path / DISCRIMINATOR_FILENAME).is_file():
            raise ValueError(f"{path}: checkpoint of a run without discriminators (adversarial)")
        weights = load_file(str(path / DISCRIMINATOR_FILENAME), device=str(device))
        adversarial.discriminator.load_state_dict(weights)
        adversarial.optimizer.load_state_dict(trainer["discriminator_optimizer"])
    return int(json.loads((path / "state.json").read_text())["step"])


def check_run_dir(out: Path, card: dict[str, Any]) -> None:
    """Refuse to resume a run directory started with another config or tokenizer."""
    path = out / "run.json"
    if path.is_file():
        found = json.loads(path.read_text())
        if found != card:
            raise ValueError(
                f"{out}: run directory holds a run with another vocoder config or tokenizer "
                f"({found} != {card}); use another --out or delete it"
            )
    else:
        atomic_write_text(path, json.dumps(card, indent=1))


def train_vocoder(
    cfg: VocoderConfig,
    tokenizer_cfg: Any,
    data_dir: str | Path,
    cache_dir: str | Path,
    out_dir: str | Path,
    *,
    progress: bool = True,
    stop_after: int | None = None,
) -> list[dict[str, float]]:
    """Train a vocoder for `tokenizer_cfg`'s codes in cache_dir (built from data_dir) and
    export it to out_dir (vocoder.safetensors + vocoder.json).

    Resumes from out_dir/checkpoints/latest when there is one (model, optimizer, sampling
    RNG, step, and the discriminators with their optimizer when `cfg.adversarial` is set):
    the losses of a resumed run equal those of one that never stopped.
    `stop_after` (tests) returns after that step without exporting, like a kill would.
    Returns the per-step records of the steps run by this call (also in metrics.jsonl).
    """
    from accelerate import PartialState
    from tqdm import tqdm

    from mmllm.config import save_config

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes > 1:
        raise RuntimeError(
            f"train_vocoder runs in one process, got {state.num_processes}; launch it with "
            f"python or accelerate launch --num_processes 1"
        )
    out = Path(out_dir)
    card = check_cache(cache_dir, tokenizer_cfg)
    signature = tokenizer_signature(tokenizer_cfg, card["tokenizer_properties"])
    hop = signature["sample_rate"] / signature["frame_rate_hz"]
    if signature["sample_rate"] != cfg.sample_rate or hop != cfg.hop:
        raise ValueError(
            f"vocoder config: sample_rate {cfg.sample_rate} / hop {cfg.hop} do not match "
            f"tokenizer {signature['name']!r} ({signature['sample_rate']} Hz, {hop:g} samples per frame)"
        )
    if signature["deduplicate"]:
        raise ValueError("a vocoder needs one code per frame; the tokenizer sets `deduplicate`")
    sampler = SegmentSampler(data_dir, cache_dir, card, cfg)
    if cfg.speaker_conditioning and len(sampler.speakers) > cfg.num_speakers:
        raise ValueError(
            f"key 'num_speakers': {cfg.num_speakers}, but the training rows have "
            f"{len(sampler.speakers)} speakers"
        )
    out.mkdir(parents=True, exist_ok=True)
    check_run_dir(out, {"vocoder_config_hash": config_hash(cfg), "tokenizer": signature})
    save_config(cfg, out, "vocoder_config.yaml")
    if (out / CARD_FILENAME).is_file() and read_card(out).get("trained_steps") == cfg.steps:
        print(f"{out}: vocoder already trained ({cfg.steps} steps)")
        return []

    device = state.device
    torch.manual_seed(cfg.seed)
    model = TokenVocoder(cfg, signature["num_codebooks"], signature["codebook_size"]).to(device)
    optimizer = make_optimizer(model, cfg)
    adversarial = None
    if cfg.adversarial is not None:
        from mmllm.vocoder_gan import AdversarialTraining

        adversarial = AdversarialTraining(cfg, device)
    generator = torch.Generator().manual_seed(cfg.seed)  # batches: CPU, saved with checkpoints
    step = load_checkpoint(out, model, optimizer, generator, adversarial)
    truncate_jsonl(out / METRICS, step)
    records: list[dict[str, float]] = []
    model.train()
    with (
        tqdm(total=cfg.steps, initial=step, unit="step", disable=not progress) as bar,
        open(out / METRICS, "a") as log,
    ):
        while step < cfg.steps:
            step += 1
            multiplier = lr_multiplier(step - 1, cfg, cfg.steps)  # the trainer's schedule
            lr = cfg.lr * multiplier
            for group in optimizer.param_groups:
                group["lr"] = lr
            if adversarial is not None:
                adversarial.set_lr(multiplier)
            codes, wav, speakers = sampler.sample(cfg.batch_size, generator)
            frame_lengths = torch.full((cfg.batch_size,), cfg.segment_frames, device=device)
            speakers = speakers.to(device) if cfg.speaker_conditioning else None
            predicted = model(codes.to(device), frame_lengths, speakers)
            wav = wav.to(device)
            losses = vocoder_losses(predicted, wav, cfg)
            if adversarial is not None and adversarial.active(step):  # D update, + G terms
                losses = adversarial.train_step(wav, predicted, losses)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            record = {"step": step, "lr": lr, "grad_norm": float(grad_norm)}
            record |= {name: float(value.detach()) for name, value in losses.items()}
            records.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update()
            if step % cfg.log_every == 0 or step == cfg.steps:
                shown = {k: f"{record[k]:.3f}" for k in ("loss", "mel", "d_loss") if k in record}
                bar.set_postfix(shown)
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save_checkpoint(
                    out, step, model, optimizer, generator, cfg.keep_checkpoints, adversarial
                )
            if stop_after is not None and step >= stop_after:
                return records
    model.eval()
    extra = {
        "trained_steps": step,
        "data": str(data_dir),
        "final_loss": records[-1] if records else None,
    }
    save_vocoder(
        model, out, signature, sampler.speakers if cfg.speaker_conditioning else None, extra
    )
    return records
