"""Token vocoders: discrete codes -> waveform, for tokenizers without a decoder.

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

Training lives above, in `mmllm.vocoder` (`mmllm vocoder`); this module is what decoding
needs: the config, the network, and loading/saving with the tokenizer signature check.

Saved as `vocoder.safetensors` + `vocoder.json` (config, the tokenizer it was trained
for, codebook weights, speakers); loaded with safetensors only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mmllm.config import OMIT_WHEN_NONE, config_dataclass, config_to_dict, from_dict
from mmllm.fileio import (
    atomic_write_bytes,
    atomic_write_text,
    state_dict_bytes,
)
from mmllm.tokenizers.kmeans import centroids_digest

if TYPE_CHECKING:
    pass


WEIGHTS_FILENAME = "vocoder.safetensors"


CARD_FILENAME = "vocoder.json"


FORMAT_VERSION = 1


UNKNOWN_SPEAKER = 0  # speaker-embedding row of "no speaker given" (decode, speaker dropout)


def _default_tasks() -> list[str]:
    # Clean single-speaker speech only: se/ss inputs are noisy or mixed, ks has noise added.
    return ["asr", "tts", "sid", "ic", "er", "sv"]


def _default_resolutions() -> list[list[int]]:
    return [[256, 64], [512, 128], [1024, 256], [2048, 512]]


@config_dataclass
class AdversarialConfig:
    """VocoderConfig.adversarial: discriminators and GAN losses (mmllm.vocoder.gan).

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
        positive = ("hidden_size", "intermediate_size", "hop", "segment_frames", "batch_size")
        for name in (*positive, "steps", "checkpoint_every", "log_every"):
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
