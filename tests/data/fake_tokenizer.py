"""A tiny deterministic tokenizer for cache tests (importable by subprocesses via PYTHONPATH).

codes[0] = quantised log-energy of each 20 ms frame, codes[1] = frame index mod 16.
With FAKE_TOKENIZER_SLEEP=seconds it sleeps per batch, so a kill -9 can land mid-run
(an environment variable, not config: the cache must stay valid across runs).
"""

import os
import time

import torch

from mmllm.tokenizers.base import TOKENIZERS, AudioTokenizer, mask_padding, register_tokenizer

HOP = 320


class EnergyTokenizer(AudioTokenizer):
    sample_rate = 16000
    frame_rate_hz = 50.0
    num_codebooks = 2
    codebook_size = 16

    def encode(self, wav, lengths):
        frame_lengths = self.frame_lengths(lengths)
        frames = int(frame_lengths.max()) if len(lengths) else 0
        padded = torch.nn.functional.pad(wav, (0, frames * HOP - wav.shape[1]))
        energy = padded.reshape(wav.shape[0], frames, HOP).square().mean(-1)
        level = (torch.log10(energy + 1e-8) * 2 + 16).clamp(0, 15).long()
        index = (torch.arange(frames) % 16).expand_as(level)
        time.sleep(float(os.environ.get("FAKE_TOKENIZER_SLEEP", "0")))
        return mask_padding(torch.stack([level, index], dim=1), frame_lengths), frame_lengths


if "test-energy" not in TOKENIZERS:
    register_tokenizer("test-energy")(EnergyTokenizer)
