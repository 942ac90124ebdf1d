"""The small SentencePiece text tokenizer used when no pretrained LLM is loaded.

    texts = synth_texts("data/synthdasb", tasks)   # every non-empty train-split transcript
    hf_tokenizer = train_text_tokenizer(texts, out_dir, vocab_size=1024, seed=0)

`train_text_tokenizer` trains SentencePiece (ids 0-3 = <unk> <s> </s> <pad>, byte fallback)
and saves an equivalent Hugging Face fast tokenizer (`hf_tokenizer_from_spm`), the raw
`spm.model` and `text_tokenizer_card.json`. CLI: `tokenizers/train_text_tokenizer.py`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mmllm.corpus.schema import TASKS
from mmllm.fileio import atomic_directory, atomic_write_text

TEXT_SPECIALS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}


def train_text_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 1024,
    seed: int = 0,
    model_type: str = "unigram",
) -> Any:
    """Train a SentencePiece model (byte fallback on; ids 0-3 = <unk> <s> </s> <pad>) on
    `texts`, wrap it as a Hugging Face fast tokenizer and save it to `out_dir` (atomically,
    with the raw `spm.model` beside it). Returns the tokenizer.

    `vocab_size` is an upper bound (a small corpus may give fewer pieces). Encoding adds no
    bos/eos: sequence builders place them. The HF tokenizer encodes exactly as the
    SentencePiece model does (identity normalisation, no whitespace collapsing).
    """
    import sentencepiece as spm

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("no non-empty texts to train the text tokenizer on")
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    buffer = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        num_threads=1,
        minloglevel=2,
    )
    proto = buffer.getvalue()
    tokenizer = hf_tokenizer_from_spm(proto, model_type)
    with atomic_directory(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
        (tmp / "spm.model").write_bytes(proto)
        card = {
            "vocab_size": len(tokenizer),
            "requested_vocab_size": vocab_size,
            "seed": seed,
            "model_type": model_type,
            "num_texts": len(texts),
        }
        atomic_write_text(tmp / "text_tokenizer_card.json", json.dumps(card, indent=2) + "\n")
    return tokenizer


def hf_tokenizer_from_spm(proto: bytes, model_type: str = "unigram") -> Any:
    """A `PreTrainedTokenizerFast` equivalent to a SentencePiece model trained as in
    `train_text_tokenizer` (same ids for the same text)."""
    import sentencepiece as spm
    from transformers import PreTrainedTokenizerFast

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    sp = spm.SentencePieceProcessor(model_proto=proto)
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    if pieces[:4] != list(TEXT_SPECIALS.values()):
        raise ValueError(f"expected ids 0-3 to be {list(TEXT_SPECIALS.values())}, got {pieces[:4]}")
    meta = [_is_meta(sp, i) for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]
    if model_type == "unigram":
        # control/unk/byte pieces come only from added tokens and byte fallback, never from
        # matching text: give them a score below every real piece
        floor = min(s for s, m in zip(scores, meta, strict=True) if not m) - 100.0
        model = models.Unigram(
            [(p, floor if m else s) for p, s, m in zip(pieces, scores, meta, strict=True)],
            unk_id=0,
            byte_fallback=True,
        )
    else:
        from transformers.convert_slow_tokenizer import generate_merges

        vocab = {p: i for i, p in enumerate(pieces)}
        merges = generate_merges(
            vocab,
            dict(zip(pieces, scores, strict=True)),
            skip_tokens=[p for p, m in zip(pieces, meta, strict=True) if m],
        )
        model = models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    # as SentencePiece: one "▁" before the text, every space a "▁", and "▁" starts a word
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **TEXT_SPECIALS)


def _is_meta(sp: Any, i: int) -> bool:
    return bool(sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i))


def synth_texts(
    root: str | Path,
    tasks: Sequence[str] = TASKS,
    split: str = "train",
    columns: Sequence[str] = ("text",),
) -> list[str]:
    """Every non-empty value of `columns` (`text`; add `label` and `speaker` for a model that
    must also write labels and read speaker names) of a SynthDASB corpus's split, task by
    task. Tasks absent on disk are skipped; none present is an error."""
    from mmllm.corpus.reader import corpus_tasks, load_task

    texts = []
    for task in corpus_tasks(root, tasks):
        dataset = load_task(root, task)[split]
        for column in columns:
            texts.extend(t for t in dataset[column] if t and t.strip())
    return texts
