"""How a process's blocks of a step split into micro-batches, and their target count (the
blocks themselves stream from mmllm.data.stream).
"""

from __future__ import annotations

import torch

from mmllm.data.packing import IGNORE_INDEX, PackedBlock, collate_blocks, target_steps


def micro_batches(blocks: list[PackedBlock], grad_accum: int) -> list[dict[str, torch.Tensor]]:
    """This process's blocks of a step as `grad_accum` collated micro-batches, in order."""
    per_micro = len(blocks) // grad_accum
    return [collate_blocks(blocks[i * per_micro : (i + 1) * per_micro]) for i in range(grad_accum)]


def count_targets(
    blocks: list[PackedBlock], step_id: int | None = None, pad_id: int | None = None
) -> int:
    """Target tokens of blocks (labels are unshifted: position 0 is never a target). With
    `step_id` (the `delay` / `depth` placeholder, mmllm.modeling.multicodebook), a target
    step also counts its codes of codebooks 1..K-1 that are not `pad_id`, as the loss does."""
    total = 0
    for block in blocks:
        total += int((block.labels[1:] != IGNORE_INDEX).sum())
        if step_id is not None and block.features is not None:
            _, rows = target_steps(block.input_ids, block.labels, block.features, step_id)
            total += int((rows[:, 1:] != pad_id).sum())
    return total
