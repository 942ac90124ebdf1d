"""How a process's blocks of a step split into micro-batches, and their target count (the
blocks themselves stream from mmllm.data.stream).
"""

from __future__ import annotations

import torch

from mmllm.data.packing import IGNORE_INDEX, PackedBlock, collate_blocks


def micro_batches(blocks: list[PackedBlock], grad_accum: int) -> list[dict[str, torch.Tensor]]:
    """This process's blocks of a step as `grad_accum` collated micro-batches, in order."""
    per_micro = len(blocks) // grad_accum
    return [collate_blocks(blocks[i * per_micro : (i + 1) * per_micro]) for i in range(grad_accum)]


def count_targets(blocks: list[PackedBlock]) -> int:
    """Target tokens of blocks (labels are unshifted: position 0 is never a target)."""
    return sum(int((b.labels[1:] != IGNORE_INDEX).sum()) for b in blocks)
