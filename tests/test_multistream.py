"""The multi-stream (`delay`) model: layouts, exact text identity, gradients, training, I/O."""

import pytest
import torch
from tiny_models import tiny_llama
from transformers import LlamaForCausalLM

from mmllm.data.packing import block_attention_mask
from mmllm.data.patterns import get_pattern
from mmllm.data.vocab import MultimodalVocab
from mmllm.experimental.multistream import (
    IGNORE_INDEX,
    MultiStreamLM,
    audio_stream_rows,
    build_stream_sequence,
    codes_from_stream_rows,
    load_multistream,
    save_multistream,
)
from mmllm.tokenizers.base import PAD_CODE

TEXT_SIZE = 40
CODEBOOK_SIZE = 16
K = 3  # streams of the tokenizer the model is built for


def make_vocab(num_codebooks: int = K) -> MultimodalVocab:
    return MultimodalVocab(TEXT_SIZE, [("semantic", 1, 8), ("codec", num_codebooks, CODEBOOK_SIZE)])


def tiny_lm(vocab: MultimodalVocab, tied: bool = False, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer, width-32 Llama with random weights, already sized to the vocab."""
    return tiny_llama(
        vocab.size, 32, 2, 4, 2, seed, max_position_embeddings=128, tie_word_embeddings=tied
    ).eval()


def random_codes(k: int, f: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CODEBOOK_SIZE, (k, f), generator=g)


def audio_example(vocab: MultimodalVocab, seed: int, num_frames: int = 10):
    """A TTS-like sequence: text prompt, then a delay-pattern audio span as the target."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, TEXT_SIZE, (5,), generator=g).tolist()
    prompt = [vocab.task_id("tts"), vocab.text_tag_id, *text, vocab.speech_tag_id]
    segments = [
        prompt + [vocab.audio_start_id],
        random_codes(K, num_frames, seed),
        [vocab.audio_end_id, vocab.eos_task_id],
    ]
    return build_stream_sequence(vocab, "codec", segments, targets=[False, True, True])


# ---- layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 8])
@pytest.mark.parametrize("f", [0, 1, 17])
def test_delay_rows_round_trip(k: int, f: int) -> None:
    vocab = make_vocab(k)
    codes = random_codes(k, f, seed=10 * k + f)
    rows = audio_stream_rows(vocab, "codec", codes)
    assert rows.shape == (f + k - 1, k)
    # the rows are the delay pattern's span, one row per model step
    span = get_pattern("delay").build(vocab.audio_ids("codec", codes), fill=vocab.pad_audio_id)
    assert torch.equal(rows, span.t())
    assert torch.equal(codes_from_stream_rows(vocab, "codec", rows), codes)


def test_pad_code_frames_round_trip() -> None:
    vocab = make_vocab(2)
    codes = torch.tensor([[3, 4, PAD_CODE], [5, 6, PAD_CODE]])
    rows = audio_stream_rows(vocab, "codec", codes)
    assert torch.equal(codes_from_stream_rows(vocab, "codec", rows), codes)


def test_sequence_layout_two_codebooks() -> None:
    """The worked example of the module docstring, id for id."""
    vocab = make_vocab(2)
    pad, start, end = vocab.pad_audio_id, vocab.audio_start_id, vocab.audio_end_id
    a = [vocab.audio_id("codec", 0, c) for c in (1, 2, 3)]
    b = [vocab.audio_id("codec", 1, c) for c in (4, 5, 6)]
    codes = torch.tensor([[1, 2, 3], [4, 5, 6]])
    ids, labels = build_stream_sequence(vocab, "codec", [[7, 8, start], codes, [end]])
    x = IGNORE_INDEX
    assert ids.tolist() == [
        [7, pad], [8, pad], [start, pad],
        [a[0], pad], [a[1], b[0]], [a[2], b[1]], [pad, b[2]],
        [end, pad],
    ]  # fmt: skip
    assert labels.tolist() == [
        [7, x], [8, x], [start, x],
        [a[0], x], [a[1], b[0]], [a[2], b[1]], [pad, b[2]],  # pad in stream 0: codebook 0 ended
        [end, x],
    ]  # fmt: skip
    _, masked = build_stream_sequence(vocab, "codec", [[7, 8], codes], targets=[False, True])
    assert (masked[:2] == x).all() and torch.equal(masked[2:], labels[3:7])


def test_sequence_rejects_codes_of_the_wrong_tokenizer_width() -> None:
    vocab = make_vocab(3)
    with pytest.raises(ValueError, match="K=3"):
        build_stream_sequence(vocab, "codec", [[1], random_codes(2, 4, 0)])


# ---- model --------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_shapes_and_head_init(tied: bool) -> None:
    vocab = make_vocab()
    lm = tiny_lm(vocab, tied)
    model = MultiStreamLM(lm, vocab, "codec")
    ids, labels = audio_example(vocab, seed=0)
    out = model(torch.stack([ids, ids]), labels=torch.stack([labels, labels]))
    assert out.logits.shape == (2, ids.shape[0], K, vocab.size)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert len(model.extra_heads) == K - 1
    for head in model.extra_heads:  # copies of the base output layer, not the same tensor
        assert torch.equal(head.weight, lm.lm_head.weight)
        assert head.weight is not lm.lm_head.weight
    assert torch.equal(model.stream_weights(), torch.full((K,), 1 / K))
    with pytest.raises(ValueError, match="B, T, K=3"):
        model(ids[None, :, :2])


@pytest.mark.parametrize("tied", [False, True])
def test_text_rows_give_the_base_models_logits_exactly(tied: bool) -> None:
    vocab = make_vocab()
    lm = tiny_lm(vocab, tied)
    model = MultiStreamLM(lm, vocab, "codec")
    with torch.no_grad():  # non-trivial mixing weights: text rows must not depend on them
        model.stream_logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
    text = [vocab.task_id("asr"), vocab.text_tag_id, 3, 17, 5, 39, vocab.eos_task_id]
    ids, _ = build_stream_sequence(vocab, "codec", [text])
    with torch.no_grad():
        assert torch.equal(model.embed(ids[None]), lm.get_input_embeddings()(ids[None, :, 0]))
        expected = lm(input_ids=ids[None, :, 0]).logits
        got = model(ids[None]).logits
    assert torch.equal(got[:, :, 0], expected)


def test_packed_4d_mask_is_passed_through() -> None:
    """Two sequences in one row with a block mask and restarted positions = each alone."""
    vocab = make_vocab()
    model = MultiStreamLM(tiny_lm(vocab), vocab, "codec")
    first, _ = audio_example(vocab, seed=1, num_frames=4)
    second, _ = audio_example(vocab, seed=2, num_frames=6)
    packed = torch.cat([first, second])[None]
    document_ids = torch.tensor([[0] * len(first) + [1] * len(second)])
    position_ids = torch.cat([torch.arange(len(first)), torch.arange(len(second))])[None]
    with torch.no_grad():
        together = model(
            packed,
            attention_mask=block_attention_mask(document_ids),
            position_ids=position_ids,
        ).logits[0]
        alone = model(second[None]).logits[0]
    torch.testing.assert_close(together[len(first) :], alone, atol=1e-5, rtol=0)


def test_mixing_weights_and_extra_heads_get_gradients() -> None:
    vocab = make_vocab()
    model = MultiStreamLM(tiny_lm(vocab), vocab, "codec").train()
    ids, labels = audio_example(vocab, seed=3)
    model(ids[None], labels=labels[None]).loss.backward()
    assert model.stream_logits.grad is not None and model.stream_logits.grad.abs().min() > 0
    for head in model.extra_heads:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_loss_ignores_everything_when_there_is_no_target() -> None:
    vocab = make_vocab()
    model = MultiStreamLM(tiny_lm(vocab), vocab, "codec")
    ids, labels = audio_example(vocab, seed=4)
    loss = model(ids[None], labels=torch.full_like(labels, IGNORE_INDEX)[None]).loss
    assert loss.item() == 0.0


def test_a_few_adamw_steps_reduce_the_loss() -> None:
    vocab = make_vocab()
    model = MultiStreamLM(tiny_lm(vocab), vocab, "codec").train()
    examples = [audio_example(vocab, seed=s) for s in (5, 6)]
    ids = torch.stack([e[0] for e in examples])
    labels = torch.stack([e[1] for e in examples])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert not torch.equal(model.stream_logits.detach(), torch.zeros(K))  # the mix was learned


# ---- checkpoints --------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path) -> None:
    vocab = make_vocab()
    model = MultiStreamLM(tiny_lm(vocab), vocab, "codec")
    with torch.no_grad():  # move every added parameter away from its initial value
        model.stream_logits.copy_(torch.tensor([0.5, -0.2, 1.0]))
        for head in model.extra_heads:
            head.weight.add_(torch.randn_like(head.weight))
    model.lm.save_pretrained(tmp_path, safe_serialization=True)
    save_multistream(model, tmp_path)

    loaded = load_multistream(tmp_path, LlamaForCausalLM.from_pretrained(tmp_path).eval(), vocab)
    ids, _ = audio_example(vocab, seed=7)
    with torch.no_grad():
        assert torch.equal(loaded(ids[None]).logits, model(ids[None]).logits)
    assert loaded.tokenizer_name == "codec"

    other = MultimodalVocab(TEXT_SIZE, [("codec", K, CODEBOOK_SIZE), ("semantic", 1, 8)])
    with pytest.raises(ValueError, match="different vocab"):
        load_multistream(tmp_path, tiny_lm(other), other)
