"""The pretraining loss and held-out evaluation.

Loss normalisation (why the loop's numbers match across setups): an optimizer step's loss
is the sum of token losses over the *global* batch (all processes, all accumulation
micro-batches) divided by its number of target tokens. Every process can count those
targets without communication, because every process knows the whole step's blocks
(`BlockSchedule.step_blocks`). 1 process and N processes on the same global batch then get
the same loss and the same gradient (tested), whatever the padding per micro-batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mmllm.data.packing import (
    IGNORE_INDEX,
    PackedBlock,
    block_attention_mask,
    collate_blocks,
)
from mmllm.modeling.attention import document_spans

LOSS_CHUNK_POSITIONS = 1024  # positions per cross-entropy chunk (fp32 logits of one chunk)


def token_loss_sum(
    model: Any, batch: dict[str, torch.Tensor], dtype: torch.dtype, packed: bool = True
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy of a packed batch [B, L] -> (sum, number of targets).

    Documents are kept apart by per-document attention (`packed`, the model must use
    PACKED_ATTENTION) or by the 4D block mask. Never materialises [B, L, V] logits: the
    model computes them only at positions some row has a target after (`logits_to_keep`;
    prompts have none), and the fp32 cross-entropy runs over chunks of positions, each
    recomputed in the backward pass instead of kept (at V = 152k and 16k positions the
    full fp32 copy alone was ~10 GB per row)."""
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if "audio_features" in batch:  # continuous / summed input (mmllm.modeling.continuous)
        inputs["audio_features"] = batch["audio_features"]
    if packed:
        inputs["document_spans"] = document_spans(batch["document_ids"])
    else:
        inputs["attention_mask"] = block_attention_mask(batch["document_ids"], dtype=dtype)
    labels = batch["labels"][:, 1:]  # the target after position t is labels[:, t + 1]
    keep = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # [n] positions
    targets = int((labels != IGNORE_INDEX).sum())
    if keep.numel() == 0:  # nothing to predict in this micro-batch
        logits = model(**inputs, logits_to_keep=1).logits
        return logits.sum() * 0.0, 0
    logits = model(**inputs, logits_to_keep=keep.to(batch["input_ids"].device)).logits
    kept_labels = labels[:, keep.to(labels.device)]  # [B, n]
    loss = logits.new_zeros((), dtype=torch.float32)
    for start in range(0, keep.numel(), LOSS_CHUNK_POSITIONS):
        chunk = slice(start, start + LOSS_CHUNK_POSITIONS)
        loss = loss + checkpoint(
            _chunk_loss, logits[:, chunk], kept_labels[:, chunk], use_reentrant=False
        )
    return loss, targets


def _chunk_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed fp32 cross-entropy of logits [B, n, V] against labels [B, n]."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


@torch.no_grad()
def evaluate(
    model: Any,
    eval_blocks: dict[str, list[PackedBlock]],
    accelerator: Any,
    dtype: torch.dtype,
    micro_batch_size: int,
    packed: bool = True,
) -> dict[str, float]:
    """Mean held-out loss per source. Blocks are dealt round-robin over processes; every
    process runs the same number of forwards (ZeRO-3 gathers parameters collectively), so
    short shares are topped up with blocks whose labels are all ignored (they count zero)."""
    was_training = model.training
    model.eval()
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    results = {}
    for source, blocks in eval_blocks.items():
        per_process = math.ceil(len(blocks) / world)
        mine = blocks[rank::world]
        filler = dataclasses.replace(
            blocks[0], labels=torch.full_like(blocks[0].labels, IGNORE_INDEX)
        )
        mine = mine + [filler] * (per_process - len(mine))
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        for start in range(0, per_process, micro_batch_size):
            batch = collate_blocks(mine[start : start + micro_batch_size])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, count = token_loss_sum(model, batch, dtype, packed)
            totals += torch.tensor([loss.item(), count], dtype=torch.float64, device=device)
        totals = accelerator.reduce(totals, reduction="sum")
        results[source] = float(totals[0] / totals[1])
    if was_training:
        model.train()
    return results
