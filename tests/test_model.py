"""Model resizing, freezing the audio rows and multimodal checkpoints (mmllm.modeling.model)."""

import pytest
import test_text_tokenizer
import torch
from test_vocab import AUDIO
from tiny_models import tiny_llama as tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mmllm.data.vocab import MultimodalVocab, extend_hf_tokenizer
from mmllm.fileio import IntegrityError
from mmllm.modeling.model import (
    load_pretrained_multimodal,
    resize_model,
    save_pretrained_multimodal,
)

text_tok_dir = test_text_tokenizer.text_tok_dir  # the shared trained-tokenizer fixture


def tiny_llama(vocab_size, tied, seed=0):
    return tiny_model(
        vocab_size, 32, 2, 4, 2, seed, max_position_embeddings=64, tie_word_embeddings=tied
    ).eval()


def rows(model):
    inp = model.get_input_embeddings().weight.detach().clone()
    return inp, model.get_output_embeddings().weight.detach().clone()


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("init", ["mean", "random", "centroids"])
def test_resize_model(text_tok_dir, tied, init):
    text_size = len(AutoTokenizer.from_pretrained(text_tok_dir))
    vocab = MultimodalVocab(text_size, AUDIO)
    model = tiny_llama(text_size, tied)
    old_in, old_out = rows(model)
    gen = torch.Generator().manual_seed(1)
    centroids = {
        ("mfcc-kmeans", 0): torch.randn(50, 13, generator=gen),
        "encodec": torch.randn(3, 16, 8, generator=gen),
    }
    resize_model(model, vocab, init=init, centroids=centroids if init == "centroids" else None)
    new_in, new_out = rows(model)
    assert new_in.shape == (vocab.size, 32) and new_out.shape == (vocab.size, 32)
    assert model.config.vocab_size == vocab.size
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert torch.equal(new_in[:text_size], old_in) and torch.equal(new_out[:text_size], old_out)
    matrices = [(old_in, new_in)] if tied else [(old_in, new_in), (old_out, new_out)]
    for old, new in matrices:
        added = new[text_size:]
        if init == "mean":
            assert torch.allclose(added, old.mean(0).expand_as(added), atol=1e-6)
        elif init == "random":
            assert abs(added.std().item() / old.std().item() - 1) < 0.1
            assert added.std(dim=0).min() > 0  # rows differ
        else:
            audio = new[vocab.audio_start :]
            assert audio.unique(dim=0).shape[0] == audio.shape[0]  # one row per code
            norm = old.norm(dim=1).mean()
            assert torch.allclose(audio.norm(dim=1), norm.expand(audio.shape[0]), rtol=1e-4)
            specials = new[text_size : vocab.audio_start]
            assert torch.allclose(specials, old.mean(0).expand_as(specials), atol=1e-6)
    if not tied:  # untied input and output layers use their own statistics
        assert not torch.allclose(new_in[vocab.audio_start], new_out[vocab.audio_start])
    logits = model(torch.tensor([[5, vocab.audio_id("encodec", 2, 1)]])).logits
    assert logits.shape == (1, 2, vocab.size)


def test_resize_centroids_requires_every_block(text_tok_dir):
    vocab = MultimodalVocab(len(AutoTokenizer.from_pretrained(text_tok_dir)), AUDIO)
    model = tiny_llama(vocab.text_size, tied=True)
    with pytest.raises(ValueError, match="no centroids for audio tokenizer 'encodec' codebook 0"):
        resize_model(
            model, vocab, init="centroids", centroids={"mfcc-kmeans": torch.ones(1, 50, 4)}
        )


@pytest.mark.parametrize("tied", [True, False])
def test_freeze_new_keeps_audio_rows(text_tok_dir, tied):
    vocab = MultimodalVocab(len(AutoTokenizer.from_pretrained(text_tok_dir)), AUDIO)
    model = tiny_llama(vocab.text_size, tied).train()
    resize_model(model, vocab, init="random", freeze_new=True)
    before_in, before_out = rows(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    audio = vocab.audio_ids("encodec", torch.arange(12).view(3, 4)).flatten().tolist()
    ids = torch.tensor([[5, 6, vocab.audio_start_id, *audio, vocab.audio_end_id, 7]])
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    after_in, after_out = rows(model)
    a = vocab.audio_start
    assert torch.equal(after_in[a:], before_in[a:]) and torch.equal(after_out[a:], before_out[a:])
    assert not torch.equal(after_in[5], before_in[5])  # text rows train
    assert not torch.equal(after_in[vocab.audio_start_id], before_in[vocab.audio_start_id])


def test_audio_input_rms_draws_the_audio_input_rows_only():
    """audio_input_rms: audio rows of the input embeddings ~ N(0, rms^2), seeded; text and
    special rows and the whole output layer as `init` left them."""
    vocab = MultimodalVocab(50, AUDIO)
    plain, scaled = tiny_llama(50, tied=False), tiny_llama(50, tied=False)
    resize_model(plain, vocab, init="mean", seed=3)
    resize_model(scaled, vocab, init="mean", seed=3, audio_input_rms=1.0)
    (plain_in, plain_out), (scaled_in, scaled_out) = rows(plain), rows(scaled)
    start = vocab.audio_start
    torch.testing.assert_close(scaled_in[:start], plain_in[:start])  # text + special rows
    torch.testing.assert_close(scaled_out, plain_out)
    audio = scaled_in[start:]
    assert audio.shape[0] == 50 + 3 * 16 and float(audio.pow(2).mean().sqrt()) == pytest.approx(
        1.0, rel=0.05
    )
    assert float(plain_in[start:].pow(2).mean().sqrt()) < 0.1  # the text rows' scale
    expected = torch.randn(audio.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(audio, expected)
    with pytest.raises(ValueError, match="audio_input_rms must be > 0 and not combined"):
        resize_model(tiny_llama(50, tied=False), vocab, init="random", audio_input_rms=0.0)
    with pytest.raises(ValueError, match="needs untied input and output embeddings"):
        resize_model(tiny_llama(50, tied=True), vocab, audio_input_rms=1.0)


def test_save_pretrained_multimodal_round_trip(text_tok_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(text_tok_dir)
    vocab = MultimodalVocab(len(tok), AUDIO)
    extend_hf_tokenizer(tok, vocab)
    model = tiny_llama(vocab.text_size, tied=False)
    resize_model(model, vocab, init="random")
    out = save_pretrained_multimodal(model, tok, vocab, tmp_path / "ckpt")

    loaded_model = AutoModelForCausalLM.from_pretrained(out).eval()
    loaded_tok = AutoTokenizer.from_pretrained(out)
    loaded_vocab = MultimodalVocab.load(out)
    assert loaded_vocab == vocab and len(loaded_tok) == vocab.size
    text = "<|task_tts|> the dog<|speech|><|audio_start|><|encodec_k0_3|><|encodec_k1_15|>"
    ids = torch.tensor([loaded_tok(text)["input_ids"]])
    assert ids[0, -1] == vocab.audio_id("encodec", 1, 15)
    assert torch.equal(ids, torch.tensor([tok(text)["input_ids"]]))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded_model(ids).logits, atol=1e-6)

    model2, tok2, vocab2 = load_pretrained_multimodal(out)
    assert vocab2 == vocab and len(tok2) == vocab.size
    with pytest.raises(ValueError, match="differ"):
        save_pretrained_multimodal(tiny_llama(vocab.text_size, True), tok, vocab, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()

    # 4 KB of the weights flipped: refused, naming the file (it would load and answer garbage)
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8192:-4096] = bytes(b ^ 0xFF for b in data[-8192:-4096])
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors: contents differ"):
        load_pretrained_multimodal(out)
