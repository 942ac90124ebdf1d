"""Per-document attention: same logits and gradients as the 4D block mask, spans by hand."""

import pytest
import torch
from tiny_models import tiny_llama

from mmllm.data.packing import Document, block_attention_mask, collate_blocks, pack_documents
from mmllm.modeling.attention import PACKED_ATTENTION, document_spans


def test_document_spans_by_hand():
    ids = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1], [0, 0, 0, 0, 0, 0, 0, 0]])
    assert document_spans(ids) == [[(0, 3), (3, 5), (5, 6)], [(0, 8)]]


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_attention_equals_block_mask(kv_heads):
    masked = tiny_llama(64, 32, 2, 4, kv_heads)
    packed = tiny_llama(64, 32, 2, 4, kv_heads)
    packed.load_state_dict(masked.state_dict())
    packed.set_attn_implementation(PACKED_ATTENTION)
    generator = torch.Generator().manual_seed(1)
    docs = [
        Document(torch.randint(0, 64, (n,), generator=generator).tolist(), [True] * n)
        for n in (17, 5, 30, 9, 2)
    ]
    batch = collate_blocks(list(pack_documents(docs, 40, 0)))
    real = batch["document_ids"] >= 0
    reference = masked(
        input_ids=batch["input_ids"],
        attention_mask=block_attention_mask(batch["document_ids"]),
        position_ids=batch["position_ids"],
    ).logits
    got = packed(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        document_spans=document_spans(batch["document_ids"]),
    ).logits
    torch.testing.assert_close(got[real], reference[real], rtol=1e-5, atol=1e-5)
    # gradients agree too (on the real positions' logits)
    reference[real].square().mean().backward()
    got[real].square().mean().backward()
    for (name, a), b in zip(masked.named_parameters(), packed.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    # without spans it is ordinary causal SDPA (generation)
    ids = torch.randint(0, 64, (2, 12), generator=generator)
    packed.set_attn_implementation(PACKED_ATTENTION)
    masked.set_attn_implementation("sdpa")
    torch.testing.assert_close(packed(ids).logits, masked(ids).logits, rtol=1e-5, atol=1e-5)
