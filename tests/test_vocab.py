"""MultimodalVocab layout and round trips, HF tokenizer extension, model resizing, checkpoints."""

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mmllm.data.schema import TASKS
from mmllm.tokenizers.base import PAD_CODE
from mmllm.vocab import (
    SPECIAL_TOKENS,
    VOCAB_FILENAME,
    MultimodalVocab,
    extend_hf_tokenizer,
    load_pretrained_multimodal,
    resize_model,
    save_pretrained_multimodal,
    train_text_tokenizer,
)

AUDIO = [("mfcc-kmeans", 1, 50), ("encodec", 3, 16)]
S = len(SPECIAL_TOKENS)


def small_vocab(text_size=100):
    return MultimodalVocab(text_size, AUDIO)


# ---- layout -----------------------------------------------------------------------------


def test_layout_offsets():
    vocab = small_vocab()
    assert len(TASKS) + 7 == S
    assert vocab.special_id("<|audio_start|>") == 100 == vocab.audio_start_id
    assert vocab.special_id("audio_end") == 101 == vocab.audio_end_id
    assert vocab.pad_audio_id == 100 + SPECIAL_TOKENS.index("<|pad_audio|>")
    assert vocab.task_id("tts") == 100 + SPECIAL_TOKENS.index("<|task_tts|>")
    assert vocab.audio_start == 100 + S
    assert vocab.audio_range("mfcc-kmeans", 0) == (100 + S, 150 + S)
    assert vocab.audio_range("encodec", 0) == (150 + S, 166 + S)
    assert vocab.audio_range("encodec", 2) == (182 + S, 198 + S)
    assert vocab.audio_range("encodec") == (150 + S, 198 + S)
    assert vocab.size == 198 + S
    assert vocab.audio_id("mfcc-kmeans", 0, 49) == 149 + S
    assert vocab.audio_id("encodec", 1, 5) == 150 + S + 16 + 5
    assert vocab.audio_id("encodec", 1, PAD_CODE) == vocab.pad_audio_id
    names = vocab.added_tokens()
    assert len(names) == vocab.num_added
    assert names[vocab.audio_id("encodec", 2, 7) - 100] == "<|encodec_k2_7|>"
    assert vocab.token_name(vocab.audio_id("mfcc-kmeans", 0, 3)) == "<|mfcc-kmeans_k0_3|>"


def test_audio_ids_round_trip_and_pad():
    vocab = small_vocab()
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (2, 3, 9), generator=gen)
    codes[1, :, 7:] = PAD_CODE
    ids = vocab.audio_ids("encodec", codes)
    assert ids.dtype == torch.long and ids.shape == codes.shape
    assert ids[0, 2, 4] == vocab.audio_id("encodec", 2, int(codes[0, 2, 4]))
    assert (ids[1, :, 7:] == vocab.pad_audio_id).all()
    for k in range(3):  # codebook k lands in block k
        start, stop = vocab.audio_range("encodec", k)
        assert ((ids[0, k] >= start) & (ids[0, k] < stop)).all()
    assert torch.equal(vocab.codes_from_ids("encodec", ids), codes)

    mfcc = torch.randint(0, 50, (1, 20), generator=gen)
    mfcc_ids = vocab.audio_ids("mfcc-kmeans", mfcc)
    assert torch.equal(vocab.codes_from_ids("mfcc-kmeans", mfcc_ids), mfcc)
    flat = vocab.audio_ids("encodec", [1, 2, 3], codebook=2)  # any shape with codebook=
    assert flat.tolist() == [vocab.audio_id("encodec", 2, c) for c in (1, 2, 3)]
    assert vocab.codes_from_ids("encodec", flat, codebook=2).tolist() == [1, 2, 3]


def test_errors_name_what_is_wrong():
    vocab = small_vocab()
    with pytest.raises(ValueError, match=r"'encodec' codebook 1: code 16 .*\[0, 16\)"):
        vocab.audio_id("encodec", 1, 16)
    with pytest.raises(ValueError, match=r"'encodec': codebook 3 out of range \[0, 3\)"):
        vocab.audio_id("encodec", 3, 0)
    with pytest.raises(KeyError, match="'dac' is not in the vocab"):
        vocab.audio_id("dac", 0, 0)
    codes = torch.zeros(3, 4, dtype=torch.long)
    codes[2, 1] = 99
    with pytest.raises(ValueError, match=r"'encodec' codebook 2: code 99 at index \[2, 1\]"):
        vocab.audio_ids("encodec", codes)
    with pytest.raises(ValueError, match="expected codes"):
        vocab.audio_ids("encodec", torch.zeros(2, 4, dtype=torch.long))
    ids = vocab.audio_ids("encodec", torch.zeros(3, 4, dtype=torch.long))
    ids[0, 0] = vocab.audio_id("encodec", 1, 0)  # codebook 1's id in codebook 0's row
    with pytest.raises(ValueError, match=r"not a code of audio tokenizer 'encodec' codebook 0"):
        vocab.codes_from_ids("encodec", ids)
    with pytest.raises(ValueError, match="out of range"):
        vocab.decode_ids([vocab.size])
    with pytest.raises(ValueError, match="listed twice"):
        MultimodalVocab(10, [("a", 1, 2), ("a", 1, 2)])
    with pytest.raises(ValueError, match="'b': codebook_size must be a positive int"):
        MultimodalVocab(10, [("b", 1, 0)])


def test_decode_ids_segments():
    vocab = small_vocab()
    ids = [5, 6, vocab.task_id("asr"), vocab.audio_start_id]
    ids += [vocab.audio_id("mfcc-kmeans", 0, 7), vocab.audio_id("encodec", 2, 3)]
    ids += [vocab.audio_end_id, 7, 99, vocab.eos_task_id]
    assert vocab.decode_ids(torch.tensor(ids)) == [
        ("text", [5, 6]),
        ("special", "<|task_asr|>"),
        ("special", "<|audio_start|>"),
        ("audio", "mfcc-kmeans", 0, 7),
        ("audio", "encodec", 2, 3),
        ("special", "<|audio_end|>"),
        ("text", [7, 99]),
        ("special", "<|eos_task|>"),
    ]


def test_save_load(tmp_path):
    vocab = small_vocab()
    path = vocab.save(tmp_path)
    assert path == tmp_path / VOCAB_FILENAME
    loaded = MultimodalVocab.load(tmp_path)
    assert loaded == vocab and loaded.to_dict() == vocab.to_dict()
    assert loaded.audio_id("encodec", 2, 15) == vocab.audio_id("encodec", 2, 15)
    assert MultimodalVocab(100, AUDIO[::-1]) != vocab
    data = json.loads(path.read_text())
    data["audio"][1]["offset"] += 1
    with pytest.raises(ValueError, match="do not match the layout"):
        MultimodalVocab.from_dict(data)
    with pytest.raises(FileNotFoundError, match="no mmllm_vocab.json"):
        MultimodalVocab.load(tmp_path / "missing")


# ---- Hugging Face tokenizer and model ---------------------------------------------------

WORDS = (
    "the",
    "a",
    "cat",
    "dog",
    "runs",
    "jumps",
    "over",
    "under",
    "quick",
    "brown",
    "lazy",
    "fox",
)


def sentences(n=200, seed=0):
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))).capitalize() + "."
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def text_tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("texttok") / "tok"
    train_text_tokenizer(sentences(), out, vocab_size=400, seed=0)
    return out


def test_text_tokenizer_matches_sentencepiece(text_tok_dir):
    import sentencepiece as spm

    tok = AutoTokenizer.from_pretrained(text_tok_dir)
    sp = spm.SentencePieceProcessor(model_file=str(text_tok_dir / "spm.model"))
    assert len(tok) == sp.get_piece_size() <= 400
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    for text in [*sentences(20, seed=1), "Zebra é 中!", "  two  spaces "]:
        ids = tok(text)["input_ids"]
        assert ids == sp.encode(text), text  # no bos/eos added, same pieces as SentencePiece
        assert tok.decode(ids) == text
    assert json.loads((text_tok_dir / "text_tokenizer_card.json").read_text())["seed"] == 0


def test_extend_hf_tokenizer(text_tok_dir):
    tok = AutoTokenizer.from_pretrained(text_tok_dir)
    vocab = MultimodalVocab(len(tok), AUDIO)
    extend_hf_tokenizer(tok, vocab)
    assert len(tok) == vocab.size
    for token_id in (vocab.audio_start_id, vocab.task_id("ss"), vocab.audio_id("encodec", 2, 15)):
        assert tok.convert_tokens_to_ids(vocab.token_name(token_id)) == token_id
    text = "<|task_asr|><|audio_start|><|mfcc-kmeans_k0_7|><|encodec_k1_3|><|audio_end|> the cat"
    ids = tok(text)["input_ids"]
    assert ids[:5] == [
        vocab.task_id("asr"),
        vocab.audio_start_id,
        vocab.audio_id("mfcc-kmeans", 0, 7),
        vocab.audio_id("encodec", 1, 3),
        vocab.audio_end_id,
    ]
    assert vocab.decode_ids(ids)[-1][0] == "text"
    assert tok.decode(ids, skip_special_tokens=True).strip() == "the cat"
    extend_hf_tokenizer(tok, vocab)  # already extended: a no-op
    assert len(tok) == vocab.size
    with pytest.raises(ValueError, match="text_size"):
        extend_hf_tokenizer(AutoTokenizer.from_pretrained(text_tok_dir), MultimodalVocab(7, AUDIO))


def tiny_llama(vocab_size, tied, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg).eval()


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


def test_train_text_tokenizer_script(synth_tiny, tmp_path):
    script = Path(__file__).resolve().parents[1] / "tokenizers" / "train_text_tokenizer.py"
    spec = importlib.util.spec_from_file_location("train_text_tokenizer_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "text"
    assert module.main(["--data", str(synth_tiny), "--out", str(out), "--vocab-size", "300"]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    assert 260 < len(tok) <= 300 and tok.eos_token == "</s>" and tok.pad_token_id == 3
    card = json.loads((out / "text_tokenizer_card.json").read_text())
    assert card["num_texts"] > 0
    assert module.main(["--data", str(tmp_path / "none"), "--out", str(out)]) == 2
