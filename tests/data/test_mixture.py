"""Mixture: weights read as passes per epoch, epochs are reproducible, every source renders,
rows without cached audio are skipped and counted."""

from collections import Counter

import pytest

from mmllm.data.augment import AudioAugment
from mmllm.data.mixture import (
    SOURCES,
    TokenCaches,
    eval_documents,
    mixture_documents,
    render_source,
    source_rows,
)
from mmllm.data.templates import TemplateRenderer
from mmllm.data.text_tokenizer import synth_texts, train_text_tokenizer
from mmllm.data.vocab import MultimodalVocab, extend_hf_tokenizer


@pytest.fixture(scope="module")
def renderer_and_caches(tiny_tokens, tmp_path_factory):
    corpus = tiny_tokens["corpus"]
    text = train_text_tokenizer(
        synth_texts(corpus, columns=("text", "label", "speaker")),
        tmp_path_factory.mktemp("text"),
        vocab_size=384,
    )
    caches = TokenCaches.open(tiny_tokens["cache"])
    vocab = MultimodalVocab(len(text), [("mfcc-kmeans", 1, 32)])
    extend_hf_tokenizer(text, vocab)
    return TemplateRenderer(vocab, text, "mfcc-kmeans", frame_rate_hz=50.0), caches


def test_every_source_renders_and_weights_scale_counts(tiny_tokens, renderer_and_caches):
    renderer, caches = renderer_and_caches
    corpus = tiny_tokens["corpus"]
    mixture = {source: 1.0 for source in SOURCES}
    mixture.update(asr=0.5, ks=2.0, text=0.0)
    docs, skipped = mixture_documents(corpus, renderer, caches, mixture, epoch=0, seed=3)
    counts = Counter(d.task for d in docs)
    assert not skipped and "text" not in counts
    assert counts["asr"] == round(0.5 * len(source_rows(corpus, "asr", "train")))
    assert counts["ks"] == 2 * len(source_rows(corpus, "ks", "train"))
    assert counts["interleaved"] == len(source_rows(corpus, "asr", "train"))
    # the same epoch again is the same documents; another epoch draws another half of asr
    again, _ = mixture_documents(corpus, renderer, caches, mixture, epoch=0, seed=3)
    assert [d.input_ids for d in again] == [d.input_ids for d in docs]
    other, _ = mixture_documents(corpus, renderer, caches, mixture, epoch=1, seed=3)
    names = lambda ds: {d.name for d in ds if d.task == "asr"}  # noqa: E731
    assert names(other) != names(docs)
    # task rows have loss on the answer only, LM documents on everything
    sample = {d.task: d for d in docs}
    assert not all(sample["asr"].loss_mask) and any(sample["asr"].loss_mask)
    assert all(sample["audio"].loss_mask)
    assert not all(sample["asr_spans"].loss_mask) and any(sample["asr_spans"].loss_mask)


def test_a_row_drawn_twice_gets_two_different_spans(tiny_tokens, renderer_and_caches):
    renderer, caches = renderer_and_caches
    corpus = tiny_tokens["corpus"]
    docs, _ = mixture_documents(corpus, renderer, caches, {"asr_spans": 3.0}, epoch=0, seed=0)
    by_row: dict[str, set] = {}
    for doc in docs:
        by_row.setdefault(doc.name, set()).add(tuple(doc.input_ids))
    assert len(docs) == 3 * len(source_rows(corpus, "asr", "train"))
    assert sum(len(variants) > 1 for variants in by_row.values()) > len(by_row) // 2


def test_augment_changes_text_answer_inputs_only_and_is_reproducible(
    tiny_tokens, renderer_and_caches
):
    renderer, caches = renderer_and_caches
    corpus = tiny_tokens["corpus"]
    mixture = {"ks": 1.0, "sv": 1.0, "se": 1.0, "interleaved": 1.0}
    augment = AudioAugment(speed=[0.8, 1.2], mask_ratio=0.2, mask_span=3)
    plain, _ = mixture_documents(corpus, renderer, caches, mixture, epoch=0, seed=1)
    warped, _ = mixture_documents(
        corpus, renderer, caches, mixture, epoch=0, seed=1, augment=augment
    )
    again, _ = mixture_documents(
        corpus, renderer, caches, mixture, epoch=0, seed=1, augment=augment
    )
    later, _ = mixture_documents(
        corpus, renderer, caches, mixture, epoch=1, seed=1, augment=augment
    )
    by_name = lambda docs: {d.name: d for d in docs}  # noqa: E731
    plain, warped, later = by_name(plain), by_name(warped), by_name(later)
    assert [d.input_ids for d in again] == [warped[d.name].input_ids for d in again]  # resume
    changed = {
        name.split(":")[0] for name in plain if plain[name].input_ids != warped[name].input_ids
    }
    assert changed == {"ks", "sv"}  # SE answers and LM documents are aligned to their audio
    for name, doc in warped.items():
        if doc.task == "ks":  # the answer (the label) is untouched; another epoch draws again
            target = [i for i, m in zip(doc.input_ids, doc.loss_mask, strict=True) if m]
            assert target == [
                i for i, m in zip(plain[name].input_ids, plain[name].loss_mask, strict=True) if m
            ]
    assert any(later[n].input_ids != warped[n].input_ids for n in warped if n.startswith("ks:"))


def test_eval_documents_are_the_first_valid_rows(tiny_tokens, renderer_and_caches):
    renderer, caches = renderer_and_caches
    held_out = eval_documents(tiny_tokens["corpus"], renderer, caches, ["asr", "tts"], per_source=3)
    rows = source_rows(tiny_tokens["corpus"], "asr", "valid")[:3]
    assert [d.name for d in held_out["asr"]] == [f"asr:{r['id']}" for r in rows]
    assert len(held_out["tts"]) == 3


def test_rows_without_cached_audio_are_skipped_and_counted(tiny_tokens, renderer_and_caches):
    renderer, caches = renderer_and_caches
    rows = source_rows(tiny_tokens["corpus"], "se", "train")[:4]
    rows[1] = {**rows[1], "id": "se-not-in-cache"}
    skipped = Counter()
    docs = render_source(renderer, caches, "se", rows, "train", 0, skipped)
    assert len(docs) == 3 and skipped == Counter({"se": 1})
    # a row that is broken in another way is an error, not a silent skip
    asr_row = dict(source_rows(tiny_tokens["corpus"], "asr", "train")[0])
    del asr_row["text"]
    with pytest.raises(KeyError, match="text"):
        render_source(renderer, caches, "asr", [asr_row], "train", 0, Counter())


def test_unknown_source_is_named(tiny_tokens):
    with pytest.raises(ValueError, match="unknown mixture source 'podcast'"):
        source_rows(tiny_tokens["corpus"], "podcast", "train")
