"""Attention over packed blocks that computes each document's own causal attention only.

A packed block holds several documents. A 4D block-diagonal mask keeps them apart, but the
attention kernel still computes every (query, key) pair of the block and throws the pairs
across documents away (most of them, for 1024-token blocks of ~100-token documents).
`packed_attention` instead runs causal scaled-dot-product attention on each document's span
separately; bench/train_throughput.py measures the whole training step 1.20x faster than
the 4D-mask path on the default model:

    model.set_attn_implementation(PACKED_ATTENTION)        # registered when imported
    model(input_ids, position_ids=pos, document_spans=document_spans(document_ids))

`document_spans` is passed through the Hugging Face model's forward kwargs down to every
attention layer (transformers forwards unknown kwargs to the attention interface). Padding
positions get a zero attention output; they are never targets and no document attends to
them. Without `document_spans` (e.g. generation with a KV cache) it is plain SDPA with the
usual causal mask. Results equal the 4D-mask path to float rounding (tested).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_ATTENTION = "mmllm_packed"


Spans = list[list[tuple[int, int]]]  # per batch row: (start, stop) of each document


def document_spans(document_ids: torch.Tensor) -> Spans:
    """document_ids [B, L] (0, 1, ... per document, -1 for padding) -> spans per row."""
    spans = []
    for row in document_ids.tolist():
        row_spans, start = [], 0
        for i in range(1, len(row) + 1):
            if i == len(row) or row[i] != row[start]:
                if row[start] >= 0:
                    row_spans.append((start, i))
                start = i
        spans.append(row_spans)
    return spans


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    document_spans: Spans | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, H, L, d], key/value [B, H_kv, L, d] -> output [B, L, H, d] (the layout the
    attention interface returns), attention restricted to each document's causal span."""
    if document_spans is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    output = query.new_zeros(query.shape)
    for row, spans in enumerate(document_spans):
        for start, stop in spans:
            output[row, :, start:stop] = F.scaled_dot_product_attention(
                query[row : row + 1, :, start:stop],
                key[row : row + 1, :, start:stop],
                value[row : row + 1, :, start:stop],
                is_causal=True,
                dropout_p=dropout,
                scale=scaling,
                enable_gqa=key.shape[1] != query.shape[1],
            )[0]
    return output.transpose(1, 2), None


AttentionInterface.register(PACKED_ATTENTION, packed_attention)


# masks are built as for SDPA (used only by the fallback path above)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
