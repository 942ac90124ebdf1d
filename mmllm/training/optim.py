"""The one optimizer and learning-rate schedule of every trainer (pretrainer, vocoder).

AdamW with weight decay on matrices only: vectors (norms, biases, layer scales, mixing
logits) and the rows named in `no_decay` (embeddings, output layer: decay would shrink
frozen rows and hurts rare tokens' rows) get none. The schedule is linear warmup, then a
cosine down to `min_lr_ratio` of the peak.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

import torch


class ScheduleConfig(Protocol):
    """What the schedule reads: the pretraining OptimSection and the VocoderConfig have it."""

    warmup_steps: int
    min_lr_ratio: float


def make_adamw(
    parameters: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    no_decay: Iterable[torch.nn.Parameter] = (),
    scaled: Iterable[torch.nn.Parameter] = (),
    scaled_lr: float | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable `parameters` in up to three groups, in this order (so a
    saved optimizer state loads back into them), each only when it has parameters: decayed
    matrices, the rest without decay, and `scaled` (without decay, at `scaled_lr`)."""
    skip = {id(p) for p in no_decay}
    special = {id(p) for p in scaled}
    decay, other, mixed = [], [], []
    for param in parameters:
        if not param.requires_grad:
            continue
        if id(param) in special:
            mixed.append(param)
        elif param.ndim >= 2 and id(param) not in skip:
            decay.append(param)
        else:
            other.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": other, "weight_decay": 0.0},
        {"params": mixed, "weight_decay": 0.0, "lr": scaled_lr or lr},
    ]
    # DeepSpeed's optimizer drops empty groups, and a schedule built for more groups than it
    # keeps fails at its first step: never make an empty one (LoRA leaves "other" empty)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas))


def lr_multiplier(step: int, schedule: ScheduleConfig, total_steps: int) -> float:
    """Linear warmup over `warmup_steps`, then cosine from 1 to `min_lr_ratio` at the end
    (0-based `step`)."""
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    span = max(1, total_steps - schedule.warmup_steps)
    progress = min(1.0, (step - schedule.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return schedule.min_lr_ratio + (1.0 - schedule.min_lr_ratio) * cosine
