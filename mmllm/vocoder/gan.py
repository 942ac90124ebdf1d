"""Optional adversarial training of the token vocoder (VocoderConfig.adversarial).

The reconstruction losses of mmllm.vocoder (multi-resolution STFT + log-mel) fit the
magnitude envelope but not its fine structure: the audio comes out smooth and buzzy.
Discriminators learn what real speech looks like beyond those averages. Two families,
as in Vocos (Siuzdak 2023), which our generator follows:

  multi-period (MPD, HiFi-GAN, Kong et al. 2020): the waveform folded into [T / p, p]
      for each period p, so a 2D conv striding over the rows compares samples exactly p
      apart: periodic structure (pitch, its harmonics) at each p;
  multi-resolution spectrogram (MRD, UnivNet, Jang et al. 2021): the log-compressed STFT
      magnitude at several (n_fft, hop) as an image [frames, bins], for the spectral
      texture each window length resolves (harmonics at long windows, onsets at short).

Losses are the hinge GAN (discriminator_loss, generator_adversarial_loss) plus feature
matching (L1 between the discriminators' hidden activations on real and generated audio).
Hinge rather than least squares (HiFi-GAN's choice): Vocos trains this very generator
with it, and the margin stops a discriminator from pushing scores of samples it already
separates by 1 any further, so a small discriminator cannot run away from the generator.

AdversarialTraining holds the discriminators and their optimizer and does each step's
discriminator update and generator terms for `train_vocoder`. The discriminators are
training state only: they are saved in checkpoints, never with the exported vocoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from mmllm.tokenizers.vocoder import AdversarialConfig, VocoderConfig
from mmllm.training.optim import make_adamw
from mmllm.vocoder.losses import magnitude

LEAKY_SLOPE = 0.1  # HiFi-GAN's and Vocos's discriminators


FEATURE_NORM_FLOOR = 1e-5  # feature matching: a near-silent real activation map is not amplified


def _run_branch(
    convs: nn.ModuleList, output: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x [B, 1, H, W] through conv + leaky ReLU layers -> (output conv's scores flattened
    [B, N], each layer's activations: the feature-matching targets)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LEAKY_SLOPE)
        features.append(x)
    return output(x).flatten(1), features


class PeriodDiscriminator(nn.Module):
    """One MPD branch: wav [B, T] -> (logits [B, N], hidden features [B, C_i, H_i, p]).

    The waveform is reflect-padded to a multiple of `period` and folded to
    [B, 1, T / period, period]; kernels (5, 1) striding 3 over rows only, so every column
    (one phase of the period) is processed separately with shared weights.
    """

    def __init__(self, period: int, channels: list[int]) -> None:
        super().__init__()
        self.period = period
        strides = [3] * (len(channels) - 1) + [1]  # the last layer keeps the row count
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(c_in, c_out, (5, 1), stride=(stride, 1), padding=(2, 0)))
            for c_in, c_out, stride in zip([1, *channels[:-1]], channels, strides, strict=True)
        )
        self.output = weight_norm(nn.Conv2d(channels[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, length = wav.shape
        pad = -length % self.period
        if pad:
            wav = F.pad(wav[:, None], (0, pad), mode="reflect")[:, 0]
        x = wav.reshape(batch, 1, -1, self.period)
        return _run_branch(self.convs, self.output, x)


class ResolutionDiscriminator(nn.Module):
    """One MRD branch: wav [B, T] -> (logits [B, N], hidden features [B, C_i, frames, bins_i]).

    Input: log(1 + |STFT|) (Hann, centred; mmllm.vocoder._magnitude) as an image
    [B, 1, frames, n_fft // 2 + 1]. log1p compresses loud bins like a log but stays finite
    on silence. Kernels (3, 9) stride 2 over frequency only: the time resolution is the
    hop's, the frequency axis (hundreds of bins) is what needs reducing.
    """

    def __init__(self, n_fft: int, hop: int, channels: list[int]) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(c_in, c_out, (3, 9), stride=(1, 2), padding=(1, 4)))
            for c_in, c_out in zip([1, *channels[:-1]], channels, strict=True)
        )
        self.output = weight_norm(nn.Conv2d(channels[-1], 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = torch.log1p(magnitude(wav, self.n_fft, self.hop)).transpose(1, 2)[:, None]
        return _run_branch(self.convs, self.output, x)


class VocoderDiscriminator(nn.Module):
    """MPD (one branch per period) + MRD (one per resolution), one module so that one
    state dict and one optimizer cover all of it.

    wav [B, T] -> (logits: list of [B, N_i], features: list of lists of [B, C, H, W]),
    one entry per branch: periods first, then resolutions.
    """

    def __init__(self, cfg: AdversarialConfig) -> None:
        super().__init__()
        self.periods = nn.ModuleList(
            PeriodDiscriminator(p, cfg.mpd_channels) for p in cfg.mpd_periods
        )
        self.resolutions = nn.ModuleList(
            ResolutionDiscriminator(n_fft, hop, cfg.mrd_channels)
            for n_fft, hop in cfg.mrd_resolutions
        )

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, features = [], []
        for branch in [*self.periods, *self.resolutions]:
            score, hidden = branch(wav)
            logits.append(score)
            features.append(hidden)
        return logits, features


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Hinge loss of the discriminator: real, fake are per-branch logits [B, N_i] ->
    scalar mean over branches of mean(relu(1 - D(real))) + mean(relu(1 + D(fake))).
    0 once every real score is >= 1 and every generated one <= -1."""
    terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake, strict=True)]
    return torch.stack(terms).mean()


def generator_adversarial_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """Hinge loss of the generator: per-branch logits [B, N_i] of generated audio -> scalar
    mean over branches of mean(relu(1 - D(fake))). Clamped like the discriminator's side
    (as Vocos does, not -D(fake)): it is >= 0, and 0 means the discriminators score the
    generated audio as confidently real."""
    return torch.stack([F.relu(1 - f).mean() for f in fake]).mean()


def feature_matching_loss(
    real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]
) -> torch.Tensor:
    """Per-branch lists of hidden activations ([B, C, H, W] each) on real and generated
    audio -> scalar: mean over all layers of mean|real - fake| / mean|real|.

    Dividing by the real activations' mean magnitude (as EnCodec does) makes every layer
    count alike whatever its activation scale; the real side is a target (detached).
    """
    terms = []
    for real_branch, fake_branch in zip(real, fake, strict=True):
        for r, f in zip(real_branch, fake_branch, strict=True):
            r = r.detach()
            terms.append((r - f).abs().mean() / r.abs().mean().clamp(min=FEATURE_NORM_FLOOR))
    return torch.stack(terms).mean()


class AdversarialTraining:
    """The discriminators and their AdamW optimizer (the generator's betas, weight decay
    and schedule; `adversarial.lr` or the generator's lr) for one `train_vocoder` run."""

    def __init__(self, cfg: VocoderConfig, device: torch.device | str) -> None:
        assert cfg.adversarial is not None
        self.cfg, self.adversarial = cfg, cfg.adversarial
        self.lr = cfg.adversarial.lr if cfg.adversarial.lr is not None else cfg.lr
        self.discriminator = VocoderDiscriminator(cfg.adversarial).to(device)
        self.optimizer = make_adamw(
            self.discriminator.parameters(), self.lr, tuple(cfg.betas), cfg.weight_decay
        )

    def active(self, step: int) -> bool:
        """Steps 1..start_step train the generator on the reconstruction losses alone."""
        return step > self.adversarial.start_step

    def set_lr(self, multiplier: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * multiplier

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update of the discriminators on real wav [B, T] vs generated wav [B, T]
        (detached: this step does not touch the generator) -> {"d_loss", "d_grad_norm"}
        (detached scalars)."""
        real_logits, _ = self.discriminator(real)
        fake_logits, _ = self.discriminator(fake.detach())
        loss = discriminator_loss(real_logits, fake_logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), clip)
        self.optimizer.step()
        return {"d_loss": loss.detach(), "d_grad_norm": norm}

    def generator_terms(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """real, fake wav [B, T] -> {"adversarial", "feature_matching"} (scalars with a
        gradient to `fake` only: the discriminators are frozen while they are scored)."""
        self.discriminator.requires_grad_(False)  # no gradient into D from the G loss
        try:
            with torch.no_grad():
                _, real_features = self.discriminator(real)
            fake_logits, fake_features = self.discriminator(fake)
        finally:
            self.discriminator.requires_grad_(True)
        return {
            "adversarial": generator_adversarial_loss(fake_logits),
            "feature_matching": feature_matching_loss(real_features, fake_features),
        }

    def train_step(
        self, real: torch.Tensor, fake: torch.Tensor, losses: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The discriminator update, then the generator's adversarial terms added to its
        reconstruction `losses` (vocoder_losses' dict): -> losses with "loss" the full
        generator objective, "reconstruction" the part vocoder_losses computed, plus
        "adversarial", "feature_matching", "d_loss", "d_grad_norm"."""
        record = self.discriminator_step(real, fake)
        terms = self.generator_terms(real, fake)
        total = (
            losses["loss"]
            + self.adversarial.weight * terms["adversarial"]
            + self.adversarial.feature_matching_weight * terms["feature_matching"]
        )
        return record | losses | terms | {"reconstruction": losses["loss"], "loss": total}
