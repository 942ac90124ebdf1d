"""Packing: documents never see each other, labels and positions are right, padding waste < 2%."""

import random

import pytest
import torch
import transformers

from mmllm.data.packing import (
    IGNORE_INDEX,
    Document,
    block_attention_mask,
    collate_blocks,
    pack_documents,
    padding_waste,
)


def doc(ids, mask=None, name=""):
    return Document(list(ids), list(mask) if mask is not None else [True] * len(ids), name=name)


def test_block_layout_by_hand():
    blocks = list(
        pack_documents(
            [doc([5, 6, 7], [False, True, True], "a"), doc([8, 9], name="b")], 6, pad_id=0
        )
    )
    assert len(blocks) == 1
    block = blocks[0]
    assert block.input_ids.tolist() == [5, 6, 7, 8, 9, 0]
    assert block.labels.tolist() == [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9, IGNORE_INDEX]
    assert block.position_ids.tolist() == [0, 1, 2, 0, 1, 0]
    assert block.document_ids.tolist() == [0, 0, 0, 1, 1, -1]
    mask = block_attention_mask(block.document_ids[None])[0, 0] == 0
    expected = torch.tensor(
        [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
         [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)  # fmt: skip
    assert torch.equal(mask, expected)


def test_too_long_document_is_named():
    with pytest.raises(
        ValueError,
        match=r"document 'asr-train-000007' \(asr\) has 9 tokens, longer than the block size 8",
    ):
        list(
            pack_documents(
                [Document([1] * 9, [True] * 9, name="asr-train-000007", task="asr")], 8, pad_id=0
            )
        )


def test_every_token_lands_once_and_waste_is_below_two_percent():
    rng = random.Random(0)
    documents = [
        doc([rng.randrange(1, 100) for _ in range(rng.randint(20, 400))], name=str(i))
        for i in range(3000)
    ]
    blocks = list(pack_documents(documents, block_size=1024, pad_id=0))
    assert sum(b.used for b in blocks) == sum(len(d.input_ids) for d in documents)
    assert sorted(n for b in blocks for n in b.names) == sorted(d.name for d in documents)
    waste = padding_waste(blocks)
    print(f"padding waste {waste:.4f} over {len(blocks)} blocks")
    assert waste < 0.02
    batch = collate_blocks(blocks[:4])
    assert batch["input_ids"].shape == (4, 1024)


def test_a_documents_logits_do_not_depend_on_its_neighbours():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    target = doc([3, 4, 5, 6, 7], name="target")

    def logits_of_target(neighbours):
        block = next(
            b for b in pack_documents([*neighbours, target], 16, pad_id=0) if "target" in b.names
        )
        batch = collate_blocks([block])
        with torch.no_grad():
            out = model(
                input_ids=batch["input_ids"],
                position_ids=batch["position_ids"],
                attention_mask=block_attention_mask(batch["document_ids"]),
            ).logits[0]
        index = block.names.index("target")
        return out[block.document_ids == index]

    with torch.no_grad():
        alone = model(input_ids=torch.tensor([target.input_ids])).logits[0]
    first = logits_of_target([doc([9, 10, 11, 12, 13, 14], name="x"), doc([20, 21], name="y")])
    second = logits_of_target([doc([30, 31, 32, 33, 34, 35, 36, 37], name="z")])
    torch.testing.assert_close(first, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(second, alone, atol=1e-5, rtol=0)
    assert not torch.isnan(first).any()
