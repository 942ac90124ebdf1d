"""Which packed blocks each optimizer step trains on (`BlockSchedule`), how a step's
blocks split into micro-batches per process, and its global target count.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from mmllm.data.packing import (
    IGNORE_INDEX,
    Document,
    PackedBlock,
    collate_blocks,
    pack_documents,
)


class BlockSchedule:
    """The packed blocks of every optimizer step, epoch after epoch, identical on every
    process and on every rerun (resume rebuilds them instead of saving them).

    make_documents(epoch) -> that epoch's documents (already in their shuffled order). An
    epoch gives len(blocks) // blocks_per_step steps; the remainder is dropped.
    """

    def __init__(
        self,
        make_documents: Callable[[int], list[Document]],
        block_size: int,
        pad_id: int,
        blocks_per_step: int,
        seed: int,
    ) -> None:
        self.make_documents = make_documents
        self.block_size, self.pad_id = block_size, pad_id
        self.blocks_per_step, self.seed = blocks_per_step, seed
        self._epoch, self._blocks = -1, []
        self._epoch_first_step = [0]  # first global step of epoch e

    def epoch_blocks(self, epoch: int) -> list[PackedBlock]:
        if epoch != self._epoch:
            blocks = list(pack_documents(self.make_documents(epoch), self.block_size, self.pad_id))
            random.Random(f"blocks-{self.seed}-{epoch}").shuffle(blocks)
            if len(blocks) < self.blocks_per_step:
                raise ValueError(
                    f"epoch {epoch} packs into {len(blocks)} blocks, fewer than one step needs "
                    f"({self.blocks_per_step}); raise the mixture weights or lower the batch"
                )
            self._epoch, self._blocks = epoch, blocks
        return self._blocks

    def locate(self, step: int) -> tuple[int, int]:
        """step -> (epoch, index of the step within the epoch)."""
        epoch = 0
        while True:
            if epoch + 1 == len(self._epoch_first_step):
                steps = len(self.epoch_blocks(epoch)) // self.blocks_per_step
                self._epoch_first_step.append(self._epoch_first_step[epoch] + steps)
            if step < self._epoch_first_step[epoch + 1]:
                return epoch, step - self._epoch_first_step[epoch]
            epoch += 1

    def step_blocks(self, step: int) -> list[PackedBlock]:
        """The global batch of optimizer step `step` (0-based)."""
        epoch, index = self.locate(step)
        blocks = self.epoch_blocks(epoch)
        return blocks[index * self.blocks_per_step : (index + 1) * self.blocks_per_step]


def micro_batches(
    blocks: list[PackedBlock], process_index: int, num_processes: int, grad_accum: int
) -> list[dict[str, torch.Tensor]]:
    """This process's share of a step's blocks, as `grad_accum` collated micro-batches.
    Blocks are dealt in order: micro-batch m of process p holds the m-th run of blocks."""
    per_micro = len(blocks) // (num_processes * grad_accum)
    batches = []
    for micro in range(grad_accum):
        start = (micro * num_processes + process_index) * per_micro
        batches.append(collate_blocks(blocks[start : start + per_micro]))
    return batches


def count_targets(blocks: list[PackedBlock]) -> int:
    """Target tokens of blocks (labels are unshifted: position 0 is never a target)."""
    return sum(int((b.labels[1:] != IGNORE_INDEX).sum()) for b in blocks)
