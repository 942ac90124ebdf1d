"""The multi-stream patterns end to end below the trainer: templates lay out `delay` and
`depth` steps, `MultiCodebookLM` embeds and predicts them, the trainer's loss matches a
hand computation, K = 1 is the flattened model, training lowers the loss, save / load keeps
the logits, and batched constrained generation equals one-by-one and writes well-formed
spans that decode back to codes."""

import dataclasses

import numpy as np
import pytest
import torch
from test_generate import make_vocab, text_tokenizer  # noqa: F401 (fixture)
from tiny_models import tiny_llama

from mmllm.data.packing import collate_blocks, pack_window
from mmllm.data.templates import TemplateRenderer
from mmllm.eval.generation import AnswerGrammar, GenerationConfig, decode_audio, generate
from mmllm.modeling.continuous import load_projector, save_projector
from mmllm.modeling.multicodebook import (
    DepthTransformer,
    MultiCodebookLM,
    load_audio_heads,
    multicodebook_lm,
    save_audio_heads,
)
from mmllm.pretrain.schedule import count_targets
from mmllm.pretrain.steps import token_loss_sum

CODEBOOK = 8  # codes per codebook of the "out" tokenizer (test_generate.make_vocab)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def codes_of(k: int, f: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CODEBOOK, (k, f))


def tts_row(i: int) -> dict:
    return {"id": f"r{i}", "task": "tts", "text": "the quick brown fox", "speaker": "dog"}


def lm_of(vocab, pattern: str, seed: int = 0, depth: dict | None = None) -> MultiCodebookLM:
    lm = tiny_llama(vocab.size, 32, 2, 4, 2, seed, max_position_embeddings=512).eval()
    small = depth or {"hidden_size": 16, "num_layers": 1, "num_heads": 2}
    return multicodebook_lm(lm, vocab, "out", pattern, small).eval()


def renderer_of(vocab, tokenizer, pattern: str) -> TemplateRenderer:
    return TemplateRenderer(vocab, tokenizer, "out", "out", pattern)


def batch_of(rendered, vocab) -> dict:
    documents = [r.document(f"d{i}", "tts") for i, r in enumerate(rendered)]
    blocks = pack_window(documents, 256, vocab.eos_task_id)
    return collate_blocks(blocks)


# ---- templates ---------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["delay", "depth"])
def test_templates_lay_out_one_placeholder_per_step(text_tokenizer, pattern):  # noqa: F811
    vocab = make_vocab(text_tokenizer, out_codebooks=3)
    codes = codes_of(3, 5, 0)
    rendered = renderer_of(vocab, text_tokenizer, pattern).render(tts_row(0), lambda key: codes)
    steps = 5 + 2 if pattern == "delay" else 5
    assert rendered.features.shape == (steps, 3) and rendered.features.dtype == np.int64
    assert rendered.prompt_features is None  # a TTS prompt has no audio
    target = rendered.target
    assert target[0] == vocab.audio_start_id and target[steps + 1] == vocab.audio_end_id
    assert target[1 : steps + 1] == [vocab.audio_embed_id] * steps
    # the rows are the pattern's layout: K ids per step, back to the codes exactly
    flat = [vocab.audio_start_id, *rendered.features.reshape(-1).tolist(), vocab.audio_end_id]
    (back,) = decode_audio(flat, vocab, "out", pattern)
    np.testing.assert_array_equal(back.numpy(), codes)
    if pattern == "delay":  # stream k is k steps late, the gaps are <|pad_audio|>
        assert rendered.features[0, 1:].tolist() == [vocab.pad_audio_id] * 2
        assert rendered.features[-1, :2].tolist() == [vocab.pad_audio_id] * 2


def test_lm_documents_lay_out_steps_with_their_rows_in_the_prompt(text_tokenizer):  # noqa: F811
    vocab = make_vocab(text_tokenizer, out_codebooks=2)
    codes = codes_of(2, 4, 3)
    renderer = TemplateRenderer(vocab, text_tokenizer, "out", "out", "delay")
    doc = renderer.lm_document("audio", {"id": "a", "text": "dog", "words": []}, lambda key: codes)
    assert doc.loss_on_prompt and doc.features.shape == (5, 2)
    assert doc.prompt.count(vocab.audio_embed_id) == 5  # every step, each a target
    np.testing.assert_array_equal(doc.prompt_features, doc.features)


def test_multi_stream_templates_need_equal_codebook_counts(text_tokenizer):  # noqa: F811
    vocab = make_vocab(text_tokenizer, out_codebooks=2)  # "in" has 1 codebook
    with pytest.raises(ValueError, match="same number of codebooks"):
        TemplateRenderer(vocab, text_tokenizer, "in", "out", "delay")


# ---- the model and the loss ----------------------------------------------------------------


def test_delay_with_one_codebook_gives_the_flattened_logits(text_tokenizer):  # noqa: F811
    vocab = make_vocab(text_tokenizer, out_codebooks=1)
    codes = codes_of(1, 6, 1)
    flat = renderer_of(vocab, text_tokenizer, "flatten").render(tts_row(0), lambda key: codes)
    delay = renderer_of(vocab, text_tokenizer, "delay").render(tts_row(0), lambda key: codes)
    model = lm_of(vocab, "delay")
    expected = model.lm(input_ids=torch.tensor([flat.input_ids])).logits
    got = model(
        input_ids=torch.tensor([delay.input_ids]),
        audio_features=torch.from_numpy(delay.features),
    ).logits
    assert len(model.audio_heads.heads) == 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # and the trainer's loss is the flattened model's loss
    loss_flat, n_flat = token_loss_sum(model.lm, batch_of([flat], vocab), torch.float32, "mask")
    loss_delay, n_delay = token_loss_sum(model, batch_of([delay], vocab), torch.float32, "mask")
    assert n_flat == n_delay
    torch.testing.assert_close(loss_delay, loss_flat, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("pattern", ["delay", "depth"])
def test_loss_is_the_hand_computed_cross_entropy(text_tokenizer, pattern):  # noqa: F811
    vocab = make_vocab(text_tokenizer, out_codebooks=3)
    renderer = renderer_of(vocab, text_tokenizer, pattern)
    rendered = [
        renderer.render(tts_row(i), lambda key, i=i: codes_of(3, 4 + i, i)) for i in range(2)
    ]
    model = lm_of(vocab, pattern)
    loss, count = token_loss_sum(model, batch_of(rendered, vocab), torch.float32, "mask")
    total, targets = torch.zeros((), dtype=torch.float64), 0
    offsets = model.code_offsets
    hidden = {}
    for r in rendered:  # each document alone, every target by hand
        ids = torch.tensor([r.input_ids])
        hook = model.lm.lm_head.register_forward_pre_hook(lambda m, a: hidden.update(h=a[0]))
        logits = model(input_ids=ids, audio_features=torch.from_numpy(r.features)).logits[0]
        hook.remove()
        row_of = np.cumsum(np.array(r.input_ids) == vocab.audio_embed_id) - 1
        for t in range(len(r.prompt), len(r.input_ids)):  # target t predicted at t - 1
            log_p = logits[t - 1].double().log_softmax(-1)
            if r.input_ids[t] != vocab.audio_embed_id:
                total, targets = total - log_p[r.input_ids[t]], targets + 1
                continue
            row = torch.from_numpy(r.features[row_of[t]])
            total, targets = total - log_p[row[0]], targets + 1
            present = row != vocab.pad_audio_id
            local = (row - offsets).masked_fill(~present, 0)
            heads = model.audio_heads(hidden["h"][0, t - 1][None], local[None, :-1])[0]
            for k in range(1, 3):
                if present[k]:
                    total = total - heads[k - 1].double().log_softmax(-1)[local[k]]
                    targets += 1
    assert count == targets
    blocks = pack_window([r.document(f"d{i}", "tts") for i, r in enumerate(rendered)], 256, 0)
    assert count_targets(blocks, vocab.audio_embed_id, vocab.pad_audio_id) == targets
    torch.testing.assert_close(loss.double(), total, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("pattern", ["delay", "depth"])
def test_training_lowers_the_loss_of_every_codebook(text_tokenizer, pattern):  # noqa: F811
    vocab = make_vocab(text_tokenizer, out_codebooks=2)
    renderer = renderer_of(vocab, text_tokenizer, pattern)
    rendered = [renderer.render(tts_row(i), lambda key, i=i: codes_of(2, 6, i)) for i in range(4)]
    batch = batch_of(rendered, vocab)
    model = lm_of(vocab, pattern).train()
    heads_before = [p.detach().clone() for p in model.audio_heads.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, count = token_loss_sum(model, batch, torch.float32, "mask")
        optimizer.zero_grad()
        (loss / count).backward()
        optimizer.step()
        first = first if first is not None else float(loss.detach() / count)
    assert float(loss.detach() / count) < first * 0.7
    moved = [
        (p - q).abs().max()
        for p, q in zip(model.audio_heads.parameters(), heads_before, strict=True)
    ]
    assert all(m > 0 for m in moved)
    assert float(model.projector.weights.detach().abs().max()) > 0  # codebook weights train


def test_depth_frame_fraction_trains_on_a_share_of_the_steps(text_tokenizer):  # noqa: F811
    vocab = make_vocab(text_tokenizer, out_codebooks=3)
    renderer = renderer_of(vocab, text_tokenizer, "depth")
    rendered = [renderer.render(tts_row(i), lambda key, i=i: codes_of(3, 20, i)) for i in range(2)]
    batch = batch_of(rendered, vocab)
    model = lm_of(vocab, "depth")
    hidden, rows = (
        torch.randn(40, 32),
        torch.from_numpy(np.concatenate([r.features for r in rendered])),
    )
    full, count_full = model.audio_loss_sum(hidden, rows)
    model.frame_fraction = 0.25
    part_a, count_a = model.audio_loss_sum(hidden, rows)
    part_b, _ = model.audio_loss_sum(hidden, rows)
    assert count_a == count_full == 2 * 40  # the count stands for every step
    assert torch.equal(part_a, part_b)  # the same draw every time (a resume redraws it)
    # a quarter of the steps (10), their sum scaled by 4: by hand from per-step losses
    codes, _ = model.local_codes(rows)
    logits = model.audio_heads(hidden, codes[:, :-1])
    per_step = (
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, CODEBOOK), codes[:, 1:].reshape(-1), reduction="none"
        )
        .reshape(40, 2)
        .sum(1)
    )
    generator = torch.Generator().manual_seed(int(rows.sum()) % (2**31))
    chosen = torch.randperm(40, generator=generator)[:10]
    torch.testing.assert_close(part_a, per_step[chosen].sum() * 4)
    assert not torch.allclose(part_a, full)
    # the trainer counts the targets the same way whatever the fraction
    _, trained = token_loss_sum(model, batch, torch.float32, "mask")
    blocks = pack_window([r.document(f"d{i}", "tts") for i, r in enumerate(rendered)], 256, 0)
    assert trained == count_targets(blocks, vocab.audio_embed_id, vocab.pad_audio_id)


def test_bf16_cast_runs_the_heads_in_bf16(text_tokenizer):  # noqa: F811
    vocab = make_vocab(text_tokenizer, out_codebooks=2)
    renderer = renderer_of(vocab, text_tokenizer, "depth")
    batch = batch_of([renderer.render(tts_row(0), lambda key: codes_of(2, 5, 0))], vocab)
    model = lm_of(vocab, "depth").to(torch.bfloat16)
    loss, count = token_loss_sum(model, batch, torch.bfloat16, "mask")
    assert torch.isfinite(loss) and count > 0


@pytest.mark.parametrize("pattern", ["delay", "depth"])
def test_save_load_keeps_the_logits(text_tokenizer, tmp_path, pattern):  # noqa: F811
    vocab = make_vocab(text_tokenizer, out_codebooks=3)
    model = lm_of(vocab, pattern, seed=3)
    with torch.no_grad():
        model.projector.weights.copy_(torch.tensor([0.3, -0.2, 0.1]))
    save_projector(model.projector, tmp_path)
    save_audio_heads(model.audio_heads, tmp_path, extra={"frame_fraction": 0.5})
    heads, config = load_audio_heads(tmp_path)
    assert config["kind"] == pattern and config["frame_fraction"] == 0.5
    fresh = tiny_llama(vocab.size, 32, 2, 4, 2, 3, max_position_embeddings=512).eval()
    loaded = multicodebook_lm(
        fresh,
        vocab,
        "out",
        pattern,
        heads=heads,
        codebook_weights=load_projector(tmp_path, fresh.get_input_embeddings()),
    ).eval()
    hidden = torch.randn(5, 32)
    codes = torch.randint(0, CODEBOOK, (5, 2))
    torch.testing.assert_close(loaded.audio_heads(hidden, codes), model.audio_heads(hidden, codes))
    rows = torch.tensor([[vocab.audio_id("out", k, k + 1) for k in range(3)]])
    torch.testing.assert_close(loaded.projector(rows), model.projector(rows))
    assert isinstance(heads, DepthTransformer) == (pattern == "depth")


# ---- generation ----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["delay", "depth"])
@pytest.mark.parametrize("k", [1, 3])
def test_batched_generation_equals_one_by_one(text_tokenizer, pattern, k):  # noqa: F811
    vocab = make_vocab(text_tokenizer, out_codebooks=k)
    renderer = renderer_of(vocab, text_tokenizer, pattern)
    model = lm_of(vocab, pattern, seed=1)
    texts = ["the quick brown fox", "dog", "the lazy cat sat", "fox"]
    rows = [{**tts_row(i), "text": t} for i, t in enumerate(texts)]
    prompts = [renderer.render(r, lambda key: codes_of(k, 1, 0)).prompt for r in rows]
    grammar = AnswerGrammar(vocab, text_tokenizer, "out", pattern)
    config = GenerationConfig(max_new_tokens=24, batch_size=4)
    batched = generate(model, prompts, vocab, config, tasks="tts", grammar=grammar)
    single = dataclasses.replace(config, batch_size=1)
    one_by_one = [
        generate(model, [p], vocab, single, tasks="tts", grammar=grammar)[0] for p in prompts
    ]
    assert batched == one_by_one
    for ids in batched:
        # well formed: <|audio_start|> K ids per step <|audio_end|> <|eos_task|>, within budget
        assert ids[0] == vocab.audio_start_id and ids[-2:] == [
            vocab.audio_end_id,
            vocab.eos_task_id,
        ]
        span = ids[1:-2]
        assert len(span) % k == 0 and len(span) // k + 3 <= 24
        (codes,) = decode_audio(ids, vocab, "out", pattern)
        assert codes.shape[0] == k and codes.shape[1] >= 1
        assert int(codes.min()) >= 0 and int(codes.max()) < CODEBOOK
        if pattern == "delay" and k > 1:  # the layout: stream j is pad in its first j steps
            steps = torch.tensor(span).reshape(-1, k)
            assert steps[0, 1:].tolist() == [vocab.pad_audio_id] * (k - 1)
            assert steps[-1, : k - 1].tolist() == [vocab.pad_audio_id] * (k - 1)
            assert len(steps) == codes.shape[1] + k - 1


def test_generated_steps_go_back_in_as_their_rows(text_tokenizer):  # noqa: F811
    """Greedy generation's steps are what teacher forcing the written rows predicts: the
    codebook-0 argmax of each step, given the rows written before it, is the next row's."""
    vocab = make_vocab(text_tokenizer, out_codebooks=2)
    renderer = renderer_of(vocab, text_tokenizer, "depth")
    model = lm_of(vocab, "depth", seed=2)
    prompt = renderer.render(tts_row(0), lambda key: codes_of(2, 1, 0)).prompt
    grammar = AnswerGrammar(vocab, text_tokenizer, "out", "depth")
    (ids,) = generate(
        model, [prompt], vocab, GenerationConfig(max_new_tokens=12), tasks="tts", grammar=grammar
    )
    (codes,) = decode_audio(ids, vocab, "out", "depth")
    full = renderer.render(tts_row(0), lambda key: codes.numpy())
    logits = model(
        input_ids=torch.tensor([full.input_ids]), audio_features=torch.from_numpy(full.features)
    ).logits[0]
    start, stop = vocab.audio_range("out", 0)
    for f in range(codes.shape[1]):
        t = len(full.prompt) + 1 + f  # the f-th step, predicted at t - 1
        assert int(logits[t - 1, start:stop].argmax()) == int(codes[0, f])
