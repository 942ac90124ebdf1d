"""The SentencePiece text tokenizer and its Hugging Face wrapper (mmllm.data.text_tokenizer), and
the tokenizers/train_text_tokenizer.py script. `text_tok_dir` is shared with test_vocab and
test_model."""

import importlib.util
import json
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mmllm.data.text_tokenizer import train_text_tokenizer

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
