"""DASB evaluation pieces: answer scoring equals one-by-one teacher forcing; error
breakdowns per speaker and label match hand counts."""

import pytest
import torch
from tiny_models import tiny_llama

from mmllm.corpus.labels import KS_LABELS
from mmllm.eval.dasb import score_answers, text_breakdown


def test_score_answers_matches_unbatched_log_probs():
    model = tiny_llama(30).eval()
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    answers = [[11, 12], [13], [14, 15, 16]]
    batched = score_answers(model, prompts, answers, batch_size=2)
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        ids = torch.tensor([prompt + answer])
        logprobs = model(input_ids=ids).logits.log_softmax(-1)[0]
        expected = sum(logprobs[len(prompt) - 1 + j, token] for j, token in enumerate(answer))
        torch.testing.assert_close(batched[i], expected, rtol=1e-5, atol=1e-5)


def test_text_breakdown_by_hand():
    rows = [
        {"speaker": "spk1"},
        {"speaker": "spk1"},
        {"speaker": "spk2"},
        {"speaker": None},  # _silence_ has no speaker
    ]
    references = ["no", "down", "no", "_silence_"]
    answers = ["go", "down", "no", "_silence_"]
    ks = text_breakdown("ks", rows, references, answers, {"ks": list(KS_LABELS)})
    assert ks["metric"] == "accuracy"
    assert ks["per_speaker"] == {
        "spk1": {"rows": 2, "score": 0.5},
        "none": {"rows": 1, "score": 1.0},
        "spk2": {"rows": 1, "score": 1.0},
    }
    assert ks["per_label"]["no"] == {"rows": 2, "score": 0.5}
    assert list(ks["per_label"])[0] == "no"  # worst first
    assert ks["confusions"] == [("no", "go", 1)]
    # ASR: WER per speaker (spk1: 1 substitution in 4 words; spk2: 2 deletions in 2)
    asr = text_breakdown("asr", rows[:3], ["a b", "c d", "e f"], ["a x", "c d", ""], None)
    assert asr["metric"] == "wer" and "per_label" not in asr
    assert asr["per_speaker"]["spk1"]["score"] == pytest.approx(0.25)
    assert asr["per_speaker"]["spk2"]["score"] == pytest.approx(1.0)
    assert list(asr["per_speaker"]) == ["spk2", "spk1"]  # worst (highest WER) first
    # SID's labels are its speakers: one table, per label
    sid = text_breakdown(
        "sid", rows[:2], ["spk1", "spk1"], ["spk1", "spk9"], {"sid": ["spk1", "spk9"]}
    )
    assert "per_speaker" not in sid and sid["per_label"] == {"spk1": {"rows": 2, "score": 0.5}}
