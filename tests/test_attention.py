"""Per-document attention: same logits and gradients as the 4D block mask."""

import pytest
import torch
from tiny_models import tiny_llama

from mmllm.data.packing import Document, block_attention_mask, collate_blocks, pack_documents
from mmllm.modeling.attention import PACKED_ATTENTION, packed_documents


def test_packed_documents_layout_by_hand():
    ids = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1], [0, 0, 0, 0, 0, 0, 0, 0]])
    layout = packed_documents(ids)
    assert (layout.num_documents, layout.max_length) == (4, 8)
    slots = layout.gather.view(4, 8)[layout.real.view(4, 8)]
    assert slots.tolist() == [0, 1, 2, 3, 4, 5, *range(8, 16)]  # documents, in order
    assert layout.real.view(4, 8).sum(1).tolist() == [3, 2, 1, 8]
    assert layout.positions.tolist() == [0, 1, 2, 3, 4, 5, *range(8, 16)]
    # a document that ends one row and one that starts the next stay two documents
    split = packed_documents(torch.tensor([[0, 0, 1], [0, 1, 1]]))
    assert split.real.view(4, 2).sum(1).tolist() == [2, 1, 1, 2]


def _models_and_batch(kv_heads: int):
    masked = tiny_llama(64, 32, 2, 4, kv_heads)
    packed = tiny_llama(64, 32, 2, 4, kv_heads)
    packed.load_state_dict(masked.state_dict())
    packed.set_attn_implementation(PACKED_ATTENTION)
    generator = torch.Generator().manual_seed(1)
    docs = [
        Document(torch.randint(0, 64, (n,), generator=generator).tolist(), [True] * n)
        for n in (17, 5, 30, 9, 2, 40, 1)
    ]
    batch = collate_blocks(list(pack_documents(docs, 40, 0)))
    return masked, packed, batch


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_attention_equals_block_mask(kv_heads):
    masked, packed, batch = _models_and_batch(kv_heads)
    real = batch["document_ids"] >= 0
    assert not real.all()  # some padding
    reference = masked(
        input_ids=batch["input_ids"],
        attention_mask=block_attention_mask(batch["document_ids"]),
        position_ids=batch["position_ids"],
    ).logits
    got = packed(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        packed_documents=packed_documents(batch["document_ids"]),
    ).logits
    torch.testing.assert_close(got[real], reference[real], rtol=1e-5, atol=1e-5)
    # gradients agree too (on the real positions' logits)
    reference[real].square().mean().backward()
    got[real].square().mean().backward()
    for (name, a), b in zip(masked.named_parameters(), packed.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    # without the layout it is ordinary causal SDPA (generation)
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 64, (2, 12), generator=generator)
    masked.set_attn_implementation("sdpa")
    torch.testing.assert_close(packed(ids).logits, masked(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_flex_attention_equals_block_mask(kv_heads):
    """The FlexAttention path (trained on CUDA) gives the block mask's logits; on CPU torch
    runs it forward only, so the gradients are checked by bench/device_check.sh."""
    masked, packed, batch = _models_and_batch(kv_heads)
    real = batch["document_ids"] >= 0
    with torch.no_grad():
        reference = masked(
            input_ids=batch["input_ids"],
            attention_mask=block_attention_mask(batch["document_ids"]),
            position_ids=batch["position_ids"],
        ).logits
        layout = packed_documents(batch["document_ids"], flex=True)
        got = packed(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            packed_documents=layout,
        ).logits
    assert layout.block_mask is not None
    torch.testing.assert_close(got[real], reference[real], rtol=1e-5, atol=1e-5)
