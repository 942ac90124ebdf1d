"""The pretraining loss and held-out evaluation.

Loss normalisation (why the loop's numbers match across setups): an optimizer step's loss
is the sum of token losses over the *global* batch (all processes, all accumulation
micro-batches) divided by its number of target tokens, summed over the processes before
the backward pass. 1 process and N processes on the same global batch (the same
`data.lanes`, mmllm.data.stream) then get the same loss and the same gradient (tested),
whatever the padding per micro-batch.
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
    target_steps,
)
from mmllm.modeling.attention import packed_documents
from mmllm.modeling.multicodebook import find_multicodebook

LOSS_CHUNK_LOGITS = 2**25  # logits per cross-entropy chunk: 128 MB in fp32, any vocabulary


def token_loss_sum(
    model: Any, batch: dict[str, torch.Tensor], dtype: torch.dtype, attention: str = "packed"
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy of a packed batch [B, L] -> (sum, number of targets).

    Documents are kept apart by per-document attention (`attention` "packed" or "flex", the
    model must use PACKED_ATTENTION) or by the 4D block mask ("mask"). Never materialises [B, L, V] logits: the
    model's final hidden states at the positions some row has a target after (prompts have
    none) are taken at the output layer's input (`logits_to_keep` selects them; a hook keeps
    the layer itself to one position), then the output layer and the fp32 cross-entropy run
    over chunks of them, each recomputed in the backward pass instead of kept (at V = 152k
    and 16k positions the full fp32 logits alone were ~10 GB per row). No other hidden
    states are returned, so gradient checkpointing keeps its savings."""
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if "audio_features" in batch:  # continuous / summed input (mmllm.modeling.continuous)
        inputs["audio_features"] = batch["audio_features"]
    if attention in ("packed", "flex"):
        inputs["packed_documents"] = packed_documents(
            batch["document_ids"], flex=attention == "flex"
        )
    else:
        inputs["attention_mask"] = block_attention_mask(batch["document_ids"], dtype=dtype)
    labels = batch["labels"][:, 1:]  # the target after position t is labels[:, t + 1]
    streams = find_multicodebook(model)
    step_rows = None
    if streams is not None and "audio_features" in batch:  # delay / depth, with audio:
        # codebook 0 of a target step is the head's target; codebooks 1..K-1 come below
        where, rows = target_steps(
            batch["input_ids"], batch["labels"], batch["audio_features"], streams.audio_embed_id
        )
        # the shifted labels' positions (the step at t + 1 is predicted at t); column 0 is
        # never a target (packing ignores every block's first label), so rows stay in order
        where = where[:, 1:]
        labels = labels.clone()
        labels[where] = rows[:, 0]
        step_rows = (where.nonzero(), rows)
    keep = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # [n] positions
    head = output_layer(model)
    taken: dict[str, torch.Tensor] = {}

    def take_head_input(module: Any, args: tuple) -> tuple:
        """Keep the head's input (the final hidden states at `keep`) and let the head
        compute one position only: the loss applies it below, chunk by chunk."""
        taken["hidden"] = args[0]
        return (args[0][:, :1], *args[1:])

    hook = head.register_forward_pre_hook(take_head_input)
    try:
        outputs = model(**inputs, logits_to_keep=keep.to(batch["input_ids"].device))
    finally:
        hook.remove()
    kept_hidden = taken["hidden"]  # [B, n, H]
    kept_labels = labels[:, keep.to(labels.device)]  # [B, n]
    # in the graph even when this micro-batch has no target; the logits carry the delay /
    # depth heads' zero-valued forward term (MultiCodebookLM.forward), which DDP waits on
    loss = kept_hidden.sum() * 0.0 + outputs.logits.sum() * 0.0
    vocab_size = outputs.logits.shape[-1]
    per_chunk = max(1, LOSS_CHUNK_LOGITS // (kept_hidden.shape[0] * vocab_size))
    for start in range(0, keep.numel(), per_chunk):
        chunk = slice(start, start + per_chunk)
        loss = loss + checkpoint(
            _chunk_loss, head, kept_hidden[:, chunk], kept_labels[:, chunk], use_reentrant=False
        )
    count = int((labels != IGNORE_INDEX).sum())
    if step_rows is not None and step_rows[0].numel():
        # codebooks 1..K-1 of every target step, from the states before it (chunked like
        # the head's loss: [n, K-1, C] fp32 logits at 16k steps would be GBs)
        where, rows = step_rows  # [m, 2] (row b, position t), [m, K]
        slot = torch.full((labels.shape[1],), -1, dtype=torch.long, device=keep.device)
        slot[keep] = torch.arange(keep.numel(), device=keep.device)
        hidden = kept_hidden[where[:, 0], slot[where[:, 1]]]  # [m, H]
        per_chunk = max(
            1, LOSS_CHUNK_LOGITS // (rows.shape[1] * streams.audio_heads.config["codebook_size"])
        )
        for start in range(0, rows.shape[0], per_chunk):
            chunk = slice(start, start + per_chunk)
            part, targets = checkpoint(
                streams.audio_loss_sum, hidden[chunk], rows[chunk], use_reentrant=False
            )
            loss, count = loss + part, count + targets
    return loss, count  # fp32: _chunk_loss sums in fp32


def output_layer(model: Any) -> torch.nn.Module:
    """The LM head under any wrapper the trainer puts around it: DeepSpeed or DDP
    (`.module`), the continuous-input LM (`.lm`), peft (delegates to its base model)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "lm", inner)
    head = inner.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output layer to compute the loss with")
    return head


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed fp32 cross-entropy of head(hidden [B, n, H]) against labels [B, n]."""
    logits = head(hidden)
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
    attention: str = "packed",
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
            loss, count = token_loss_sum(model, batch, dtype, attention)
            totals += torch.tensor([loss.item(), count], dtype=torch.float64, device=device)
        totals = accelerator.reduce(totals, reduction="sum")
        results[source] = float(totals[0] / totals[1])
    if was_training:
        model.train()
    return results
