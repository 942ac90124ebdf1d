"""The vocoder's reconstruction losses: multi-resolution STFT (spectral convergence +
log-magnitude L1) and a log-mel L1, at the resolutions and weights of its config."""

from __future__ import annotations

import torch

from mmllm.audio.features import log_mel
from mmllm.tokenizers.vocoder import VocoderConfig

LOSS_LOG_FLOOR = 1e-5  # log-magnitude / log-mel floor of the losses: silence must not dominate


def magnitude(wav: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
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
        true, pred = magnitude(target, n_fft, hop), magnitude(predicted, n_fft, hop)
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
