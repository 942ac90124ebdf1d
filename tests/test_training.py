"""Training pieces: LR schedule, DeepSpeed config filling, block schedule, micro-batches,
the token loss, LoRA (trains only what it should) and config checks."""

import json

import pytest
import torch
from tiny_models import tiny_llama as tiny_model

from mmllm.config import ConfigError
from mmllm.data.packing import (
    IGNORE_INDEX,
    Document,
    block_attention_mask,
    collate_blocks,
    pack_documents,
)
from mmllm.data.vocab import MultimodalVocab
from mmllm.modeling.model import resize_model
from mmllm.pretrain.build import apply_lora, build_model, make_optimizer
from mmllm.pretrain.config import (
    LoraSection,
    OptimSection,
    PretrainConfig,
    TrainSection,
    check_pretrain_config,
)
from mmllm.pretrain.distributed import deepspeed_config
from mmllm.pretrain.schedule import count_targets, micro_batches
from mmllm.pretrain.steps import token_loss_sum
from mmllm.training.optim import lr_multiplier

VOCAB = MultimodalVocab(50, [("codes", 2, 8)])  # 50 text + specials + 16 audio ids


def tiny_llama(vocab_size=50, tie=False):
    return tiny_model(vocab_size, tie_word_embeddings=tie)


def test_lr_warmup_then_cosine_to_floor():
    optim = OptimSection(warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_multiplier(s, optim, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # halfway through the cosine (step 4 + 5 of 10): 0.1 + 0.9 * 0.5
    assert lr_multiplier(9, optim, 14) == pytest.approx(0.55)
    assert lr_multiplier(14, optim, 14) == pytest.approx(0.1)
    assert lr_multiplier(100, optim, 14) == pytest.approx(0.1)


def test_deepspeed_config_fills_auto_and_refuses_conflicts(tmp_path):
    train = TrainSection(micro_batch_size=3, grad_accum=5)
    ds = deepspeed_config("configs/deepspeed/zero3.json", train, grad_clip=0.5, bf16=True)
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 5
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True} and ds["zero_optimization"]["stage"] == 3
    fixed = tmp_path / "ds.json"
    fixed.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8}))
    with pytest.raises(
        ValueError, match=r"ds.json: train_micro_batch_size_per_gpu is 8 .* gives 3"
    ):
        deepspeed_config(fixed, train, 1.0, False)


def documents(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    docs = []
    for i in range(count):
        length = int(torch.randint(3, 30, (1,), generator=generator))
        ids = torch.randint(0, 50, (length,), generator=generator).tolist()
        docs.append(Document(ids, [True] * length, name=f"d{i}", task="asr"))
    return docs


def test_micro_batches_split_a_process_share_in_order():
    blocks = list(pack_documents(documents(60), 32, 0))[:6]
    batches = micro_batches(blocks, grad_accum=3)
    assert len(batches) == 3 and all(b["input_ids"].shape == (2, 32) for b in batches)
    rows = [row for b in batches for row in b["input_ids"]]
    assert all(torch.equal(row, block.input_ids) for row, block in zip(rows, blocks, strict=True))


def test_count_targets_by_hand():
    docs = [Document([1, 2, 3], [False, True, True]), Document([4, 5], [True, True])]
    (block,) = pack_documents(docs, 8, 0)
    # doc 1: ids 2, 3 are targets; doc 2: its first token never is, so only 5
    assert count_targets([block]) == 3


def test_token_loss_sum_equals_hf_loss_for_one_document():
    model = tiny_llama()
    ids = list(range(5, 25))
    (block,) = pack_documents([Document(ids, [True] * len(ids))], 32, 0)
    batch = {k: v[None] for k, v in vars(block).items() if isinstance(v, torch.Tensor)}
    loss_sum, count = token_loss_sum(model, batch, torch.float32)
    reference = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert count == len(ids) - 1
    torch.testing.assert_close(loss_sum / count, reference, rtol=1e-5, atol=1e-6)
    assert block.labels[0] == IGNORE_INDEX


@pytest.mark.parametrize("freeze_audio", [False, True])
def test_lora_trains_adapters_and_new_rows_only(freeze_audio):
    model = resize_model(tiny_llama(), VOCAB, init="random")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = apply_lora(model, LoraSection(r=2, alpha=4), VOCAB, freeze_audio=freeze_audio)
    optimizer = make_optimizer(model, OptimSection(lr=0.1, weight_decay=0.1))
    # no empty group (DeepSpeed drops them, and the LR schedule then fails), and the new rows
    # peft trains in full are embedding rows: no weight decay on them
    assert all(group["params"] for group in optimizer.param_groups)
    new_rows = {id(p) for n, p in model.named_parameters() if "trainable_tokens_delta" in n}
    assert new_rows and all(
        group["weight_decay"] == 0.0
        for group in optimizer.param_groups
        if new_rows & {id(p) for p in group["params"]}
    )
    ids = torch.arange(VOCAB.size)[None]  # every text, special and audio id once
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    merged = model.merge_and_unload()
    after = merged.state_dict()
    trained_rows = VOCAB.audio_start if freeze_audio else VOCAB.size
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        # text rows (and frozen audio rows) untouched, the trainable new rows moved
        assert torch.equal(after[name][: VOCAB.text_size], before[name][: VOCAB.text_size])
        assert torch.equal(after[name][trained_rows:], before[name][trained_rows:])
        assert not torch.allclose(
            after[name][VOCAB.text_size : trained_rows],
            before[name][VOCAB.text_size : trained_rows],
        )
    # adapted projections changed once merged, the others (MLP, norms) did not
    assert not torch.equal(
        after["model.layers.0.self_attn.q_proj.weight"],
        before["model.layers.0.self_attn.q_proj.weight"],
    )
    for name in ("model.layers.0.mlp.up_proj.weight", "model.norm.weight"):
        assert torch.equal(after[name], before[name])


def test_optimizer_decays_only_inner_matrices():
    model = resize_model(tiny_llama(), VOCAB)
    optimizer = make_optimizer(model, OptimSection(weight_decay=0.1))
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert id(model.get_input_embeddings().weight) not in decayed
    assert id(model.lm_head.weight) not in decayed
    assert id(model.model.layers[0].self_attn.q_proj.weight) in decayed
    assert id(model.model.norm.weight) not in decayed
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    total = sum(len(g["params"]) for g in optimizer.param_groups)
    assert total == len(list(model.parameters()))


def test_mixing_weights_get_their_own_learning_rate():
    """optim.mixing_lr_scale: summed input's codebook logits step at scale x lr (Adam's first
    step moves every parameter by ~lr, whatever its gradient's size); the rest at lr."""
    from mmllm.modeling.continuous import CodebookSum, ContinuousInputLM

    vocab = MultimodalVocab(VOCAB.text_size, [("mel-rvq", 4, 8)])
    lm = resize_model(tiny_llama(), vocab, audio_input_rms=1.0)  # distinct rows: w has a gradient
    model = ContinuousInputLM(lm, CodebookSum(4, lm.get_input_embeddings()), vocab.audio_embed_id)
    optimizer = make_optimizer(model, OptimSection(lr=3e-3, mixing_lr_scale=10.0))
    assert [len(g["params"]) for g in optimizer.param_groups][2] == 1
    assert optimizer.param_groups[2]["params"][0] is model.projector.weights
    assert optimizer.param_groups[2]["lr"] == pytest.approx(0.03)
    assert optimizer.param_groups[2]["weight_decay"] == 0.0
    total = sum(len(g["params"]) for g in optimizer.param_groups)
    assert total == len(list(model.parameters()))
    ids = torch.tensor([[vocab.text_size - 1, vocab.audio_embed_id, vocab.audio_embed_id]])
    rows = vocab.audio_ids("mel-rvq", torch.tensor([[1, 2], [3, 4], [5, 6], [7, 0]])).T
    before = model.projector.weights.detach().clone()
    norm_before = lm.model.norm.weight.detach().clone()
    out = model(input_ids=ids, audio_features=rows)
    out.logits[0, -1, 0].backward()
    optimizer.step()
    moved = (model.projector.weights.detach() - before).abs()
    assert torch.allclose(moved, torch.full((4,), 0.03), rtol=0.01), moved
    assert (lm.model.norm.weight.detach() - norm_before).abs().max() <= 3e-3 * 1.01
    plain = make_optimizer(resize_model(tiny_llama(), VOCAB), OptimSection(mixing_lr_scale=10.0))
    assert len(plain.param_groups) == 2  # no mixing weights, no extra group


def test_config_checks_name_the_key():
    cfg = PretrainConfig()
    check_pretrain_config(cfg)  # the embedded default is valid
    cfg.data.mixture = {"asr": 1.0, "podcasts": 2.0}
    cfg.train.steps = 0
    cfg.data.pattern = "weave"
    with pytest.raises(ValueError) as err:
        check_pretrain_config(cfg)
    message = str(err.value)
    assert "data.mixture: unknown source(s) ['podcasts']" in message
    assert "train.steps: must be >= 1" in message
    assert "data.pattern: 'weave'" in message


def test_audio_input_checks_name_the_key():
    cfg = PretrainConfig(audio_input="summed")
    cfg.data.mixture = {"asr": 1.0, "tts": 1.0, "text": 0.25}
    check_pretrain_config(cfg)  # summed: audio answers are the input tokenizer's tokens
    cfg.data.mixture["interleaved"] = 0.5
    with pytest.raises(
        ValueError, match=r"\['interleaved'\] predict input audio as tokens, which summed input"
    ):
        check_pretrain_config(cfg)
    cfg.audio_input = "tokens"
    with pytest.raises(ValueError, match="audio_input: 'tokens'; expected one of"):
        check_pretrain_config(cfg)


def test_default_yaml_is_the_embedded_default():
    """`accelerate launch train/pretrain.py` (no --config) == --config configs/pretrain/default.yaml."""
    from mmllm.config import load_config

    assert load_config(PretrainConfig, "configs/pretrain/default.yaml") == PretrainConfig()


def test_audio_input_rms_auto_is_one_for_a_model_from_scratch_only(tmp_path):
    from mmllm.config import load_config, save_config
    from mmllm.pretrain.config import ModelSection, load_run_config

    assert ModelSection().resolved_audio_input_rms() == 1.0
    assert ModelSection(base="some/hub-model").resolved_audio_input_rms() is None
    assert ModelSection(init="centroids").resolved_audio_input_rms() is None
    assert ModelSection(audio_input_rms=None).resolved_audio_input_rms() is None
    assert ModelSection(base="x", audio_input_rms=0.5).resolved_audio_input_rms() == 0.5
    with pytest.raises(ConfigError, match="model.audio_input_rms"):
        load_config(PretrainConfig, None, ["model.audio_input_rms=big"])
    # a run saved while the key was left out at null reads back as null, not as today's auto
    saved = save_config(PretrainConfig(), tmp_path)
    text = saved.read_text()
    assert "audio_input_rms: auto" in text
    saved.write_text(text.replace("  audio_input_rms: auto\n", ""))
    assert load_run_config(saved).model.resolved_audio_input_rms() is None
    saved.write_text(text)
    assert load_run_config(saved).model.resolved_audio_input_rms() == 1.0


def test_from_scratch_model_draws_audio_input_rows_at_unit_rms():
    from mmllm.pretrain.config import ModelSection

    section = dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=32)
    drawn = build_model(ModelSection(**section), VOCAB, 64, seed=0).get_input_embeddings().weight
    kept = build_model(ModelSection(**section, audio_input_rms=None), VOCAB, 64, seed=0)
    kept = kept.get_input_embeddings().weight
    audio = slice(VOCAB.audio_start, None)
    assert drawn[audio].pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=0.1)
    assert kept[audio].pow(2).mean().sqrt().item() < 0.01  # `mean` init: copies of the mean row
    assert torch.equal(drawn[: VOCAB.audio_start], kept[: VOCAB.audio_start])


def test_gradient_checkpointing_gives_the_same_gradients():
    from mmllm.pretrain.config import ModelSection

    section = dict(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    plain = build_model(ModelSection(**section), VOCAB, 64, seed=0)
    checkpointed = build_model(
        ModelSection(**section, gradient_checkpointing=True), VOCAB, 64, seed=0
    )
    flag = (  # renamed in transformers 5.x like the enabling call (mmllm.training.build_model)
        "is_activation_checkpointing"
        if hasattr(type(plain), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    assert getattr(checkpointed, flag) and not getattr(plain, flag)
    docs = [Document(list(range(3, 3 + n)), [True] * n) for n in (9, 14)]
    batch = collate_blocks(list(pack_documents(docs, 32, 0)))
    for model in (plain, checkpointed):
        model.train()
        loss, _ = token_loss_sum(model, batch, torch.float32)
        loss.backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_chunked_loss_over_target_positions_equals_the_full_logits_loss(monkeypatch):
    """token_loss_sum computes logits only where some row has a target and the fp32 loss in
    chunks: the same sum and the same gradients as cross-entropy over the full [B, L, V]."""
    import mmllm.pretrain.steps as steps

    # 3 positions of the 2 rows per chunk: several chunks and a ragged last one
    monkeypatch.setattr(steps, "LOSS_CHUNK_LOGITS", 3 * 2 * VOCAB.size)
    model = tiny_llama()
    docs = [  # prompts (no loss) and answers, in two rows
        Document(list(range(3, 15)), [False] * 8 + [True] * 4),
        Document(list(range(20, 27)), [False] * 5 + [True] * 2),
        Document(list(range(30, 41)), [True] * 11),
    ]
    batch = collate_blocks(list(pack_documents(docs, 16, 0)))
    loss, count = token_loss_sum(model, batch, torch.float32, attention="mask")
    loss.backward()
    chunked = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    mask = block_attention_mask(batch["document_ids"], dtype=torch.float32)
    logits = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask
    ).logits
    labels = batch["labels"][:, 1:]
    full = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    full.backward()
    assert count == int((labels != IGNORE_INDEX).sum()) == 4 + 2 + 10
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(chunked[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
