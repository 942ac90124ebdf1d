"""Templates: every task renders the documented layout, audio spans decode back to their codes."""

import zlib

import numpy as np
import pytest

from mmllm.corpus.reader import load_task
from mmllm.corpus.schema import TASKS
from mmllm.data.templates import TemplateRenderer
from mmllm.data.vocab import MultimodalVocab

TEXT_SIZE = 128


class CharTokenizer:
    """Stand-in text tokenizer: one id per character."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % TEXT_SIZE for c in text]


VOCAB = MultimodalVocab(TEXT_SIZE, [("in", 2, 16), ("out", 1, 32)])


def codes_for(key: str, num_codebooks: int, size: int, frames: int = 7) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return rng.integers(0, size, (num_codebooks, frames))


def lookup_in(key):
    return codes_for(key, 2, 16)


def lookup_out(key):
    return codes_for(key, 1, 32, frames=5)


def renderer(pattern="flatten"):
    return TemplateRenderer(VOCAB, CharTokenizer(), "in", "out", pattern=pattern)


def audio_spans(ids):
    """Split ids into the audio spans between <|audio_start|> and <|audio_end|>."""
    spans, current = [], None
    for token in ids:
        if token == VOCAB.audio_start_id:
            current = []
        elif token == VOCAB.audio_end_id:
            spans.append(current)
            current = None
        elif current is not None:
            current.append(token)
    return spans


def unflatten(span, tokenizer, num_codebooks):
    ids = np.array(span).reshape(-1, num_codebooks).T  # flatten is frame-major: [F, K] -> [K, F]
    return VOCAB.codes_from_ids(tokenizer, ids).numpy()


def row(task, **fields):
    return {
        "id": f"{task}-1",
        "task": task,
        "text": "",
        "label": "",
        "speaker": "",
        "words": [],
        **fields,
    }


def test_asr_layout_and_audio_round_trip():
    rendered = renderer().render(row("asr", text="hi you"), lookup_in)
    assert rendered.prompt[0] == VOCAB.task_id("asr") and rendered.prompt[-1] == VOCAB.text_tag_id
    assert rendered.target == CharTokenizer().encode("hi you") + [VOCAB.eos_task_id]
    (span,) = audio_spans(rendered.prompt)
    np.testing.assert_array_equal(unflatten(span, "in", 2), lookup_in("asr-1"))
    assert rendered.loss_mask == [False] * len(rendered.prompt) + [True] * len(rendered.target)


@pytest.mark.parametrize("task", ["ks", "ic", "er", "sid"])
def test_label_tasks_predict_the_label(task):
    rendered = renderer().render(row(task, label="_unknown_"), lookup_in)
    assert rendered.target == CharTokenizer().encode("_unknown_") + [VOCAB.eos_task_id]


def test_sv_puts_enrollment_first_and_answers_yes_no():
    rendered = renderer().render(row("sv", label="different"), lookup_in)
    first, second = audio_spans(rendered.prompt)
    np.testing.assert_array_equal(unflatten(first, "in", 2), lookup_in("sv-1#ref0"))
    np.testing.assert_array_equal(unflatten(second, "in", 2), lookup_in("sv-1"))
    assert rendered.target == CharTokenizer().encode("no") + [VOCAB.eos_task_id]


def test_generative_tasks_target_output_tokenizer_audio():
    tts = renderer().render(row("tts", text="go", speaker="spk003"), lookup_in, lookup_out)
    assert not audio_spans(tts.prompt) and tts.prompt[-1] == VOCAB.speech_tag_id
    (target,) = audio_spans(tts.target)
    np.testing.assert_array_equal(unflatten(target, "out", 1), lookup_out("tts-1"))
    ss = renderer().render(row("ss"), lookup_in, lookup_out)
    first, second = audio_spans(ss.target)
    np.testing.assert_array_equal(unflatten(second, "out", 1), lookup_out("ss-1#ref1"))
    assert VOCAB.sep_id in ss.target and ss.target[-1] == VOCAB.eos_task_id
    se = renderer().render(row("se"), lookup_in, lookup_out)
    np.testing.assert_array_equal(
        unflatten(audio_spans(se.target)[0], "out", 1), lookup_out("se-1#ref0")
    )


def test_first_pattern_keeps_codebook_zero_only():
    rendered = renderer("first").render(row("asr", text="a"), lookup_in)
    (span,) = audio_spans(rendered.prompt)
    np.testing.assert_array_equal(
        VOCAB.codes_from_ids("in", np.array(span), codebook=0).numpy(), lookup_in("asr-1")[0]
    )


def test_unknown_tokenizer_named():
    with pytest.raises((KeyError, ValueError), match="nope"):
        TemplateRenderer(VOCAB, CharTokenizer(), "nope")


def test_every_synth_task_renders(synth_tiny):
    r = renderer()
    for task in TASKS:
        for corpus_row in load_task(synth_tiny, task)["train"].select(range(3)):
            rendered = r.render(corpus_row, lookup_in, lookup_out)
            assert (
                rendered.prompt[0] == VOCAB.task_id(task)
                and rendered.target[-1] == VOCAB.eos_task_id
            )
            assert all(0 <= t < VOCAB.size for t in rendered.input_ids)


def test_interleaved_alternates_and_covers_every_word(synth_tiny):
    corpus_row = load_task(synth_tiny, "asr")["train"][0]
    frames = int(np.ceil(corpus_row["words"][-1]["end"] * 50)) + 3
    codes = np.stack([np.arange(frames) % 16, np.zeros(frames, dtype=np.int64)])
    document = renderer().lm_document("interleaved", corpus_row, lambda key: codes, seed=1)
    assert document.loss_mask == [True] * len(document.input_ids)
    tags = [t for t in document.input_ids if t in (VOCAB.text_tag_id, VOCAB.speech_tag_id)]
    assert len(tags) >= 2 and all(
        a != b for a, b in zip(tags, tags[1:], strict=False)
    )  # alternating
    # text spans are consecutive runs of the sentence's words, in order
    sentence, cursor = " ".join(w["word"] for w in corpus_row["words"]), 0
    segments, current = [], None
    for token in document.input_ids:
        if token in (VOCAB.text_tag_id, VOCAB.speech_tag_id, VOCAB.eos_task_id):
            if current is not None:
                segments.append(current)
            current = (
                ("text", [])
                if token == VOCAB.text_tag_id
                else ("speech", [])
                if token == VOCAB.speech_tag_id
                else None
            )
        elif current is not None:
            current[1].append(token)
    for kind, tokens in segments:
        if kind == "text":
            words = "".join(chr(t) for t in tokens)
            found = sentence.find(words, cursor)
            assert found >= cursor, (words, sentence)
            cursor = found + len(words)
    # speech spans are contiguous, increasing slices of the codes (codebook 0 holds frame % 16)
    previous_end = -1
    for span in audio_spans(document.input_ids):
        frame_codes = unflatten(span, "in", 2)[0]
        assert all((b - a) % 16 == 1 for a, b in zip(frame_codes, frame_codes[1:], strict=False))
        assert len(frame_codes) > 0
        previous_end += len(frame_codes)
    assert previous_end < frames
    again = renderer().lm_document("interleaved", corpus_row, lambda key: codes, seed=1)
    assert again.input_ids == document.input_ids  # seeded per row


def test_asr_span_is_the_asr_template_over_a_cut_of_whole_words(synth_tiny):
    corpus_row = load_task(synth_tiny, "asr")["train"][0]
    words = corpus_row["words"]
    frames = int(np.ceil(words[-1]["end"] * 50)) + 3
    codes = np.stack([np.arange(frames) % 16, np.zeros(frames, dtype=np.int64)])
    spans = [renderer().asr_span(corpus_row, lambda key: codes, seed=s) for s in range(12)]
    lengths = set()
    for rendered in spans:
        assert rendered.prompt[0] == VOCAB.task_id("asr")
        assert rendered.prompt[-1] == VOCAB.text_tag_id
        assert rendered.target[-1] == VOCAB.eos_task_id
        assert rendered.loss_mask == [False] * len(rendered.prompt) + [True] * len(rendered.target)
        text = "".join(chr(t) for t in rendered.target[:-1])
        first = next(
            i for i in range(len(words)) if " ".join(w["word"] for w in words[i:]).startswith(text)
        )
        count = len(text.split())
        assert " ".join(w["word"] for w in words[first : first + count]) == text
        lengths.add(count)
        # the audio is the frames from the first word's start to the next word's start
        (span,) = audio_spans(rendered.prompt)
        frame_codes = unflatten(span, "in", 2)[0]
        start = int(round(words[first]["start"] * 50))
        stop = (
            frames
            if first + count == len(words)
            else int(round(words[first + count]["start"] * 50))
        )
        assert list(frame_codes) == [f % 16 for f in range(start, stop)]
    assert lengths <= {1, 2, 3, 4} and len(lengths) > 1  # seeded, varied lengths
    again = renderer().asr_span(corpus_row, lambda key: codes, seed=3)
    assert again.input_ids == spans[3].input_ids
