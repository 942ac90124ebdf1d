"""Attention over packed blocks that computes each document's own causal attention only.

A packed block holds several documents. A 4D block-diagonal mask keeps them apart, but the
attention kernel still computes every (query, key) pair of the block and throws the pairs
across documents away (most of them, for 1024-token blocks of ~100-token documents). Two
fused paths compute only each document's own causal attention, with one kernel call per
layer and no host sync inside the model:

- **repadded** (default, any device): the documents of the whole micro-batch are gathered
  into one [D, H, max_len, d] batch (one row per document, padded at its end), attended with
  causal SDPA (flash / memory-efficient kernels on CUDA) and scattered back. The waste is the
  padding up to the longest document.
- **flex** (CUDA): FlexAttention with a document `BlockMask` over the packed block itself;
  no padding at all, blocks of the mask that no document covers are skipped. Compiled on
  CUDA; on CPU it runs forward only (eager, no backward in torch), for tests.

    model.set_attn_implementation(PACKED_ATTENTION)        # registered when imported
    documents = packed_documents(document_ids, flex=False)  # once per micro-batch
    model(input_ids, position_ids=pos, packed_documents=documents)

`packed_documents` is passed through the Hugging Face model's forward kwargs down to every
attention layer (transformers forwards unknown kwargs to the attention interface). Padding
positions of a block get a zero attention output; they are never targets and no document
attends to them. Without it (e.g. generation with a KV cache) it is plain SDPA with the usual
causal mask. Both paths equal the 4D-mask path to float rounding (tests/test_attention.py;
bench/train_throughput.py measures them against the per-document loop they replaced).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_ATTENTION = "mmllm_packed"


@dataclass
class PackedDocuments:
    """Where the documents of a packed micro-batch lie (built once per forward).

    document_ids [B, L]: 0, 1, ... per document of a row, -1 for padding.
    gather [D * max_len]: flat position (row * L + t) of each repadded slot; slots past a
        document's end point at position 0 and are dropped by `real`.
    real [D * max_len]: which repadded slots hold a document token.
    positions [N]: the flat positions of every document token, in the order `real` keeps.
    block_mask: FlexAttention's document mask when the flex path was asked for."""

    document_ids: torch.Tensor
    gather: torch.Tensor
    real: torch.Tensor
    positions: torch.Tensor
    num_documents: int
    max_length: int
    block_mask: Any = None


def packed_documents(document_ids: torch.Tensor, flex: bool = False) -> PackedDocuments:
    """document_ids [B, L] -> the layout both fused paths use (one host sync: max_len)."""
    rows, length = document_ids.shape
    device = document_ids.device
    flat = document_ids.reshape(-1)
    position = torch.arange(flat.numel(), device=device)
    in_document = flat >= 0
    new_row = position % length == 0
    changed = torch.ones_like(in_document)
    changed[1:] = (flat[1:] != flat[:-1]) | new_row[1:]
    starts = position[changed & in_document]  # [D]
    ends = torch.ones_like(in_document)
    ends[:-1] = changed[1:]
    lengths = position[ends & in_document] + 1 - starts  # [D]
    max_length = int(lengths.max()) if lengths.numel() else 0
    offsets = torch.arange(max_length, device=device)
    real = offsets[None, :] < lengths[:, None]  # [D, max_len]
    gather = torch.where(real, starts[:, None] + offsets[None, :], 0)
    block_mask = _document_block_mask(document_ids) if flex else None
    return PackedDocuments(
        document_ids,
        gather.reshape(-1),
        real.reshape(-1),
        position[in_document],
        int(starts.numel()),
        max_length,
        block_mask,
    )


def _document_block_mask(document_ids: torch.Tensor) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    def same_document_causal(batch, head, query, key):
        document = document_ids[batch, query]
        return (document == document_ids[batch, key]) & (query >= key) & (document >= 0)

    rows, length = document_ids.shape
    return create_block_mask(
        same_document_causal, rows, None, length, length, device=document_ids.device
    )


_compiled_flex: Any = None


def _flex_attention(query, key, value, block_mask, scaling) -> torch.Tensor:
    """[B, H, L, d] -> [B, H, L, d]; compiled on CUDA (eager FlexAttention is a slow
    reference that materialises the scores), eager elsewhere."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    kernel = flex_attention
    if query.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        kernel = _compiled_flex
    return kernel(
        query,
        key,
        value,
        block_mask=block_mask,
        scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )


def _repadded_attention(query, key, value, documents: PackedDocuments, dropout, scaling):
    """[B, H, L, d] -> [B, H, L, d]: one causal SDPA over every document, each its own row."""
    rows, heads, length, dim = query.shape
    count, width = documents.num_documents, documents.max_length
    if count == 0:  # a micro-batch of padding only
        return query * 0.0

    def repad(x: torch.Tensor) -> torch.Tensor:  # [B, h, L, d] -> [D, h, max_len, d]
        flat = x.transpose(1, 2).reshape(rows * length, x.shape[1], dim)
        return flat.index_select(0, documents.gather).view(count, width, x.shape[1], dim)

    attended = F.scaled_dot_product_attention(
        repad(query).transpose(1, 2),
        repad(key).transpose(1, 2),
        repad(value).transpose(1, 2),
        is_causal=True,  # a document's padding follows it, so its tokens never see padding
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=key.shape[1] != heads,
    )  # [D, H, max_len, d]
    tokens = attended.transpose(1, 2).reshape(count * width, heads, dim)[documents.real]
    output = query.new_zeros(rows * length, heads, dim).index_copy(0, documents.positions, tokens)
    return output.view(rows, length, heads, dim).transpose(1, 2)


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    packed_documents: PackedDocuments | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, H, L, d], key/value [B, H_kv, L, d] -> output [B, L, H, d] (the layout the
    attention interface returns), attention restricted to each document's causal span."""
    if packed_documents is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if packed_documents.block_mask is not None:
        if dropout:
            raise ValueError("flex packed attention has no attention dropout; set it to 0")
        output = _flex_attention(query, key, value, packed_documents.block_mask, scaling)
    else:
        output = _repadded_attention(query, key, value, packed_documents, dropout, scaling)
    return output.transpose(1, 2), None


AttentionInterface.register(PACKED_ATTENTION, packed_attention)


# masks are built as for SDPA (used only by the fallback path above)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
