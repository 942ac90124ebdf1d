"""DASB evaluation pieces: answer scoring equals one-by-one teacher forcing."""

import torch
from tiny_models import tiny_llama

from mmllm.dasb import score_answers


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
