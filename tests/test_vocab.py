"""MultimodalVocab layout and round trips, HF tokenizer extension."""

import json

import pytest
import test_text_tokenizer
import torch
from transformers import AutoTokenizer

from mmllm.corpus.schema import TASKS
from mmllm.data.vocab import SPECIAL_TOKENS, VOCAB_FILENAME, MultimodalVocab, extend_hf_tokenizer
from mmllm.tokenizers.base import PAD_CODE

text_tok_dir = test_text_tokenizer.text_tok_dir  # the shared trained-tokenizer fixture
AUDIO = [("mfcc-kmeans", 1, 50), ("encodec", 3, 16)]
S = len(SPECIAL_TOKENS)


def small_vocab(text_size=100):
    return MultimodalVocab(text_size, AUDIO)


# ---- layout -----------------------------------------------------------------------------


def test_layout_offsets():
    vocab = small_vocab()
    assert len(TASKS) + 8 == S  # 7 shared specials, one per task, <|audio_embed|>
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


# ---- Hugging Face tokenizer -------------------------------------------------------------


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
