"""Batched, KV-cached, constrained generation for prompted tasks.

    grammar = AnswerGrammar(vocab, hf_tokenizer, output_tokenizer="mfcc-kmeans", pattern="flatten")
    outputs = generate(model, prompts, vocab, GenerationConfig(max_new_tokens=64),
                       tasks=["ks", "asr", ...], grammar=grammar,
                       allowed_texts={"ks": ks_labels})     # optional label sets per task
    decode_text(outputs[0], hf_tokenizer, vocab)               # -> "yes"
    decode_audio(outputs[1], vocab, "mfcc-kmeans", "flatten")  # -> [codes [K, F] per span]

`prompts` are token id lists (`TemplateRenderer.render(row, ...).prompt`). Each returned list
holds the generated ids up to and including `<|eos_task|>` (no padding; a row that ran out
of `max_new_tokens` simply has no eos). With a `delay` / `depth` model
(mmllm.modeling.multicodebook) every audio step the model writes appears as its K vocab
ids, in codebook order (delay gaps as <|pad_audio|>), and `max_new_tokens` counts steps.

Why a hand-written loop over the KV cache rather than `model.generate`: the answer
grammar (mmllm.eval.grammar) needs each row's chosen token to update a per-row state
machine, and a row that finished must stop while the others go on; both are a few lines
here. The per-step overhead of `generate` (its processor/stopping-criteria machinery, cache
preparation) is also a large share of a step for the small models of the embedded default
on CPU. `ConstrainedLogitsProcessor` is nevertheless a `transformers.LogitsProcessor` and
gives the same results inside `model.generate(..., logits_processor=[...])` (tested).

The prompting CLI (`mmllm generate --checkpoint DIR TASK INPUT...`) lives in
`mmllm.eval.prompting`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from mmllm.config import config_dataclass
from mmllm.data.patterns import MULTI_STREAM, get_pattern
from mmllm.data.vocab import MultimodalVocab
from mmllm.eval.grammar import (  # noqa: F401 (re-exported: callers import them from here)
    AUDIO_ANSWER_SPANS,
    TEXT_ANSWER_TASKS,
    AnswerGrammar,
    ConstrainedLogitsProcessor,
)
from mmllm.modeling.multicodebook import MultiCodebookLM


@config_dataclass
class GenerationConfig:
    """max_new_tokens: generated tokens per prompt at most (eos included)
    batch_size:      prompts per batch at most (sorted by length, longest first)
    max_padding:     a batch also closes before its prompt tokens would be more than this
                     fraction padding (prompt processing is most of the work for short answers)
    do_sample:       False = greedy; True = sample with temperature / top_k / top_p
    top_k:           keep the k most likely ids (0 = all); top_p: nucleus mass (1.0 = all)
    seed:            seeds the sampler (same prompts + config -> same outputs)
    constrained:     apply the answer grammar when one is given to `generate`"""

    max_new_tokens: int = 256
    batch_size: int = 16
    max_padding: float = 0.25
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    constrained: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        if not 0 <= self.max_padding < 1:
            raise ValueError("max_padding must be in [0, 1)")
        if self.temperature <= 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("need temperature > 0, top_k >= 0 and 0 < top_p <= 1")


def _pick(scores: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None):
    """scores [B, V] (forbidden ids at -inf) -> next ids [B]: argmax, or a sample from the
    temperature / top-k / top-p filtered distribution (the constraint applies first)."""
    if not cfg.do_sample:
        return scores.argmax(dim=-1)
    scores = scores / cfg.temperature
    if cfg.top_k:
        kth = scores.topk(min(cfg.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        mass_before = ordered.softmax(dim=-1).cumsum(dim=-1) - ordered.softmax(dim=-1)
        drop = mass_before > cfg.top_p  # the most likely id always stays (mass before it 0)
        scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def cache_argument(model: Any) -> str:
    """The name under which the LLM's forward takes (and its output returns) the KV cache:
    `cache` in newer transformers 5 releases, where `past_key_values` still works but warns
    and is to be removed; `past_key_values` before. `model` may be the AudioInputModel
    wrapper (mmllm.modeling.continuous), whose LLM is `.lm`."""
    language_model = getattr(model, "lm", model)
    parameters = inspect.signature(language_model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@torch.no_grad()
def _generate_batch(
    model: Any,
    prompts: list[list[int]],
    cfg: GenerationConfig,
    eos_id: int,
    pad_id: int,
    processor: ConstrainedLogitsProcessor | None,
    generator: torch.Generator | None,
    frames: np.ndarray | None = None,
) -> list[list[int]]:
    """One left-padded batch through the KV-cached loop -> generated ids per row.

    A `MultiCodebookLM` (delay / depth) writes an audio step where the grammar's pick for
    codebook 0 is a code (or delay's <|pad_audio|>): its audio heads add codebooks 1..K-1
    from the same final state, the step goes back in as one <|audio_embed|> with its row of
    K ids, and the row's K ids are what the output holds for that step."""
    streams = model if isinstance(model, MultiCodebookLM) else None
    if streams is not None and processor is None:
        raise ValueError("a delay / depth model generates through the answer grammar")
    device = model.get_input_embeddings().weight.device
    batch, width = len(prompts), max(len(p) for p in prompts)
    sequence = torch.full((batch, width + cfg.max_new_tokens), pad_id, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        sequence[i, width - len(prompt) : width] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    sequence, mask = sequence.to(device), mask.to(device)
    # left padding shifts each row: positions count real tokens only, as in training
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    extra = {} if frames is None else {"audio_features": torch.from_numpy(frames).to(device)}
    cache_key = cache_argument(model)
    state: dict[str, torch.Tensor] = {}
    hook = None
    if streams is not None:  # the final state at the last position, which the heads read
        head = streams.get_output_embeddings()
        hook = head.register_forward_pre_hook(lambda _, args: state.update(h=args[0][:, -1]))
    written: list[list[int]] = [[] for _ in prompts]  # delay / depth: K ids per audio step
    try:
        out = model(
            **extra,
            input_ids=sequence[:, :width],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_key: DynamicCache(config=model.config)},  # grows by concatenation
        )
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        next_position = positions[:, -1:] + 1
        steps = 0
        for step in range(cfg.max_new_tokens):
            logits = out.logits[:, -1, :]  # half-precision logits are sampled in float32
            scores = logits.to(torch.promote_types(logits.dtype, torch.float32))
            if processor is not None:
                scores = processor(sequence[:, : width + step], scores)
            token = _pick(scores, cfg, generator).masked_fill(done, pad_id)
            sequence[:, width + step] = token
            next_ids, rows = token, None
            if streams is not None:
                next_ids, rows = _write_steps(
                    streams, token, done, state["h"], processor, cfg, generator, written
                )
            done |= token == eos_id
            steps = step + 1
            if bool(done.all()) or steps == cfg.max_new_tokens:
                break
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
            out = model(
                **({} if rows is None else {"audio_features": rows}),
                input_ids=next_ids[:, None],
                attention_mask=mask,
                position_ids=next_position,
                use_cache=True,
                **{cache_key: getattr(out, cache_key)},
            )
            next_position = next_position + 1
    finally:
        if hook is not None:
            hook.remove()
    if streams is not None:
        return written
    results = []
    for row in sequence[:, width : width + steps].tolist():
        results.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return results


def _write_steps(
    model: MultiCodebookLM,
    token: torch.Tensor,
    done: torch.Tensor,
    hidden: torch.Tensor,
    processor: ConstrainedLogitsProcessor,
    cfg: GenerationConfig,
    generator: torch.Generator | None,
    written: list[list[int]],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step of a delay / depth batch: the rows whose codebook-0 pick `token` [B] is a
    code (or delay's pad) become audio steps with K ids (`sample_codebooks` from `hidden`
    [B, D]); every row's ids go to `written`. -> (next input ids [B], rows [m, K] or None)."""
    first = model.code_offsets[0].item()
    size = model.audio_heads.config["codebook_size"]
    is_step = ~done & (((token >= first) & (token < first + size)) | (token == model.pad_id))
    index = is_step.nonzero().squeeze(1)
    rows = None
    if index.numel():
        active = [
            getattr(processor.rows[i], "active", lambda: [True] * (model.num_codebooks - 1))()
            for i in index.tolist()
        ]
        active = torch.tensor(active, dtype=torch.bool, device=token.device)
        active = active.reshape(index.numel(), model.num_codebooks - 1)

        def pick(scores: torch.Tensor) -> torch.Tensor:
            return _pick(scores.float(), cfg, generator)

        rows = model.sample_codebooks(hidden[index], token[index], active, pick)
    step_rows = dict(zip(index.tolist(), rows.tolist() if rows is not None else [], strict=True))
    for i, chosen in enumerate(token.tolist()):
        if not done[i]:
            written[i].extend(step_rows.get(i, [chosen]))
    next_ids = torch.where(is_step, torch.full_like(token, model.audio_embed_id), token)
    return next_ids, rows


def plan_batches(lengths: Sequence[int], batch_size: int, max_padding: float) -> list[list[int]]:
    """Indices grouped into batches, longest prompts first: a batch closes at `batch_size`
    rows or before its padded positions would exceed `max_padding` of its prompt tokens."""
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if current:
            padded = lengths[current[0]] * (len(current) + 1)
            if len(current) == batch_size or padded - real - lengths[i] > max_padding * padded:
                batches.append(current)
                current, real = [], 0
        current.append(i)
        real += lengths[i]
    return batches + [current] if current else batches


def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    vocab: MultimodalVocab,
    config: GenerationConfig | None = None,
    *,
    tasks: str | Sequence[str] | None = None,
    grammar: AnswerGrammar | None = None,
    allowed_texts: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    pad_id: int | None = None,
    features: Sequence[np.ndarray | None] | None = None,
) -> list[list[int]]:
    """Generate an answer for every prompt (token id lists), batched and KV-cached.

    Prompts are sorted by length and cut into batches (`plan_batches`: at most
    `config.batch_size` rows, little padding; left-padded, 2D attention mask); results come back in input order, each ending with <|eos_task|>
    unless `max_new_tokens` ran out. With `grammar` (and `config.constrained`), `tasks`
    (one per prompt, or one for all) selects each row's answer grammar; `allowed_texts`
    restricts text answers to given strings. `features` (continuous / summed input,
    mmllm.modeling.continuous): each prompt's rows [n, D], one per <|audio_embed|>.
    The model is put in eval mode for the call.
    """
    cfg = config or GenerationConfig()
    prompts = [list(map(int, p)) for p in prompts]
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if isinstance(tasks, str):
        tasks = [tasks] * len(prompts)
    use_grammar = grammar is not None and cfg.constrained
    if use_grammar and (tasks is None or len(tasks) != len(prompts)):
        raise ValueError("constrained generation needs one task per prompt (tasks=...)")
    pad = pad_id if pad_id is not None else vocab.eos_task_id
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.do_sample else None
    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for chunk in plan_batches([len(p) for p in prompts], cfg.batch_size, cfg.max_padding):
            processor = None
            if use_grammar:
                processor = grammar.processor(
                    [tasks[i] for i in chunk], allowed_texts, cfg.max_new_tokens, pad
                )
            frames = None
            if features is not None and any(features[i] is not None for i in chunk):
                # rows in batch order: the placeholders' row-major order after left padding
                frames = np.concatenate([features[i] for i in chunk if features[i] is not None])
            outputs = _generate_batch(
                model,
                [prompts[i] for i in chunk],
                cfg,
                vocab.eos_task_id,
                pad,
                processor,
                generator,
                frames,
            )
            for i, output in zip(chunk, outputs, strict=True):
                results[i] = output
    finally:
        model.train(was_training)
    return results


def answer_ids(ids: Sequence[int], vocab: MultimodalVocab) -> list[int]:
    """Generated ids up to (not including) the first <|eos_task|>."""
    ids = list(ids)
    return ids[: ids.index(vocab.eos_task_id)] if vocab.eos_task_id in ids else ids


def decode_text(ids: Sequence[int], text_tokenizer: Any, vocab: MultimodalVocab) -> str:
    """Generated ids -> answer text: text ids only, the tokenizer's specials removed."""
    text_ids = [i for i in answer_ids(ids, vocab) if 0 <= i < vocab.text_size]
    return text_tokenizer.decode(text_ids, skip_special_tokens=True).strip()


def audio_spans(ids: Sequence[int], vocab: MultimodalVocab) -> list[list[int]]:
    """Ids between each <|audio_start|> and <|audio_end|> of the answer; an unterminated
    last span (max_new_tokens ran out) counts too."""
    spans, current = [], None
    for token in answer_ids(ids, vocab):
        if token == vocab.audio_start_id:
            current = []
            spans.append(current)
        elif token == vocab.audio_end_id:
            current = None
        elif current is not None:
            current.append(token)
    return spans


def decode_audio(
    ids: Sequence[int], vocab: MultimodalVocab, tokenizer: str, pattern: str = "flatten"
) -> list[torch.Tensor]:
    """Generated ids -> codes per audio span: [K, F] int64 (`first`: [1, F], codebook 0).
    A trailing incomplete frame (or step) is dropped; a non-audio id inside a span is a
    ValueError. `delay` / `depth` spans hold K ids per step (`generate`); a delay span cut
    before codebook 0's end keeps the frames every codebook reached."""
    layout = get_pattern(pattern)
    num_codebooks = vocab.block(tokenizer).num_codebooks
    width = num_codebooks if pattern in ("flatten", *MULTI_STREAM) else 1
    codes = []
    for span in audio_spans(ids, vocab):
        tokens = torch.tensor(span[: len(span) // width * width], dtype=torch.long)
        if pattern in MULTI_STREAM:
            tokens = tokens.reshape(-1, num_codebooks).T  # [K, steps]
            if pattern == "delay" and tokens.shape[1] < num_codebooks - 1:
                tokens = tokens.new_zeros((num_codebooks, num_codebooks - 1))  # no whole frame
        grid = layout.revert(tokens, num_codebooks)  # [K, F] ids ([1, F] for first)
        codebook = 0 if pattern == "first" else None
        codes.append(vocab.codes_from_ids(tokenizer, grid, codebook=codebook))
    return codes
