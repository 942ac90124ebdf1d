"""Batched, KV-cached, constrained generation for prompted tasks, and the prompting CLI.

    grammar = AnswerGrammar(vocab, hf_tokenizer, output_tokenizer="mfcc-kmeans", pattern="flatten")
    outputs = generate(model, prompts, vocab, GenerationConfig(max_new_tokens=64),
                       tasks=["ks", "asr", ...], grammar=grammar,
                       allowed_texts={"ks": ks_labels})     # optional label sets per task
    decode_text(outputs[0], hf_tokenizer, vocab)               # -> "yes"
    decode_audio(outputs[1], vocab, "mfcc-kmeans", "flatten")  # -> [codes [K, F] per span]

`prompts` are token id lists (`TemplateRenderer.render(row, ...).prompt`). Each returned list
holds the generated ids up to and including `<|eos_task|>` (no padding; a row that ran out
of `max_new_tokens` simply has no eos).

Why a hand-written loop over `past_key_values` rather than `model.generate`: the answer
grammar needs each row's chosen token to update a per-row state machine, and a row that
finished must stop while the others go on; both are a few lines here. The per-step overhead
of `generate` (its processor/stopping-criteria machinery, cache preparation) is also a large
share of a step for the small models of the embedded default on CPU. `ConstrainedLogitsProcessor`
is nevertheless a `transformers.LogitsProcessor` and gives the same results inside
`model.generate(..., logits_processor=[...])` (tested).

Answer grammar per task (what the constraint allows, token by token):

    asr ks ic er sid sv   TEXT+ <|eos_task|>      TEXT = ids [0, text_size) minus the text
                                                 tokenizer's own specials (<unk> <s> </s> <pad>)
      with allowed_texts  one of the given strings' token sequences, then <|eos_task|>
    tts se                <|audio_start|> AUDIO <|audio_end|> <|eos_task|>
    ss                    <|audio_start|> AUDIO <|audio_end|> <|sep|> <|audio_start|> AUDIO <|audio_end|> <|eos_task|>

Inside AUDIO only the output tokenizer's codes of the pattern's codebook at that position are
allowed (`flatten`: codebook = position mod K; `first`: codebook 0), and <|audio_end|> only
after a whole number (>= 1) of frames. Given `max_new_tokens`, the constraint also closes
open answers in time (text: eos as the last token; labels: only labels that still fit;
audio: each span ends by its share of the budget), so every row ends well formed whenever
the budget allows the shortest answer.

Prompting CLI (thin: `main` parses, `run_cli` calls `Checkpoint`, `build_prompt`, `generate`):

    python -m mmllm.generate --checkpoint DIR asr speech.wav
    python -m mmllm.generate --checkpoint DIR sv enrollment.wav trial.wav
    python -m mmllm.generate --checkpoint DIR tts "some text" --speaker ID --out out.wav
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessor

from mmllm.config import ConfigError, config_dataclass, load_config
from mmllm.data.schema import TASKS
from mmllm.patterns import get_pattern
from mmllm.templates import SV_ANSWERS, TemplateRenderer
from mmllm.tokenizers.base import TokenizerConfig
from mmllm.vocab import VOCAB_FILENAME, MultimodalVocab

TEXT_ANSWER_TASKS = ("asr", "ks", "ic", "er", "sid", "sv")
AUDIO_ANSWER_SPANS = {"tts": 1, "se": 1, "ss": 2}  # audio spans in the answer
PRETRAIN_CONFIG_FILENAME = "mmllm_pretrain.yaml"


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


# ---- the answer grammar -----------------------------------------------------------------


class _Trie:
    """Token sequences of the allowed texts. Node 0 is the root; `finish[n]` is the fewest
    tokens (eos included) that complete an allowed text from node n."""

    def __init__(self, sequences: list[list[int]]) -> None:
        self.children: list[dict[int, int]] = [{}]
        self.terminal = [False]
        for sequence in sequences:
            node = 0
            for token in sequence:
                if token not in self.children[node]:
                    self.children.append({})
                    self.terminal.append(False)
                    self.children[node][token] = len(self.children) - 1
                node = self.children[node][token]
            self.terminal[node] = True
        self.finish = [0] * len(self.children)
        for node in reversed(range(len(self.children))):  # children come after their parent
            options = [self.finish[c] + 1 for c in self.children[node].values()]
            self.finish[node] = min([1] if self.terminal[node] else options)


class AnswerGrammar:
    """What answers may contain for one vocab, text tokenizer, output tokenizer and pattern.

    Holds the allowed-id masks (`[V]` bool, built once per kind and shared by every batch);
    `processor(tasks, ...)` makes the per-batch, per-row state machine."""

    def __init__(
        self,
        vocab: MultimodalVocab,
        text_tokenizer: Any,
        output_tokenizer: str | None = None,
        pattern: str = "flatten",
    ) -> None:
        if pattern not in ("flatten", "first"):
            raise ValueError(f"pattern {pattern!r}: constrained decoding lays out flatten or first")
        self.vocab, self.text_tokenizer, self.pattern = vocab, text_tokenizer, pattern
        self.output_tokenizer = output_tokenizer or (vocab.tokenizers[-1] if vocab.blocks else None)
        block = vocab.block(self.output_tokenizer) if self.output_tokenizer else None
        # tokens per frame inside a span: flatten writes K codebooks per frame, first one
        self.frame_width = block.num_codebooks if block and pattern == "flatten" else 1
        specials = getattr(text_tokenizer, "all_special_ids", None) or []
        self.text_specials = sorted({int(i) for i in specials if 0 <= int(i) < vocab.text_size})
        self._keys: dict[tuple, int] = {}
        self._rows: list[torch.Tensor] = []
        self._stacked: dict[tuple[torch.device, int], torch.Tensor] = {}
        self._tries: dict[tuple[str, ...], _Trie] = {}

    def trie(self, texts: Sequence[str]) -> _Trie:
        key = tuple(texts)
        if key not in self._tries:
            sequences = []
            for text in key:
                ids = list(self.text_tokenizer.encode(text, add_special_tokens=False))
                if not ids:
                    raise ValueError(f"allowed_texts: {text!r} encodes to no tokens")
                sequences.append(ids)
            self._tries[key] = _Trie(sequences)
        return self._tries[key]

    def mask_index(self, key: tuple) -> int:
        """Index of the mask for `key` in the bank (built on first use). Keys:
        ("text", allow_eos) | ("tok", id) | ("audio", codebook, allow_end) | ("ids", ids...)."""
        if key not in self._keys:
            v = self.vocab
            row = torch.zeros(v.size, dtype=torch.bool)
            if key[0] == "text":
                row[: v.text_size] = True
                row[self.text_specials] = False
                row[v.eos_task_id] = key[1]
            elif key[0] == "audio":
                start, stop = v.audio_range(self.output_tokenizer, key[1])
                row[start:stop] = True
                row[v.audio_end_id] = key[2]
            else:  # "tok" (one id) or "ids" (trie children, eos)
                row[list(key[1:])] = True
            self._keys[key] = len(self._rows)
            self._rows.append(row)
            self._stacked.clear()
        return self._keys[key]

    def masks(self, indices: list[int], width: int, device: torch.device) -> torch.Tensor:
        """Allowed ids [B, width] of the bank rows `indices` (ids >= vocab.size never allowed)."""
        cache_key = (device, width)
        if cache_key not in self._stacked:
            bank = torch.stack(self._rows)[:, :width]
            if width > bank.shape[1]:  # a model whose output layer is padded beyond the vocab
                bank = torch.nn.functional.pad(bank, (0, width - bank.shape[1]))
            self._stacked[cache_key] = bank.to(device)
        return self._stacked[cache_key][torch.tensor(indices, device=device)]

    def processor(
        self,
        tasks: Sequence[str],
        allowed_texts: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        max_new_tokens: int | None = None,
        pad_id: int | None = None,
    ) -> ConstrainedLogitsProcessor:
        """A fresh processor for one batch, one task per row. `allowed_texts`: label strings
        for every text-answer row (a list) or per task (a mapping; tasks absent keep TEXT+)."""
        rows: list[_Row] = []
        for task in tasks:
            texts = allowed_texts.get(task) if isinstance(allowed_texts, Mapping) else allowed_texts
            if task in TEXT_ANSWER_TASKS:
                eos = self.vocab.eos_task_id
                rows.append(_LabelRow(self.trie(texts), eos) if texts else _TextRow(eos))
            elif task in AUDIO_ANSWER_SPANS:
                if self.output_tokenizer is None:
                    raise ValueError(
                        f"task {task!r} writes audio; the vocab has no audio tokenizer"
                    )
                rows.append(_AudioRow(AUDIO_ANSWER_SPANS[task], self.frame_width, self.vocab))
            else:
                raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
        pad = self.vocab.eos_task_id if pad_id is None else pad_id
        return ConstrainedLogitsProcessor(self, rows, max_new_tokens, pad)


class _Row:
    """One row's answer state: `key(left)` names its allowed ids given `left` tokens still
    to come (None: unlimited); `advance(token)` consumes the chosen token (never eos)."""

    def key(self, left: int | None) -> tuple:
        raise NotImplementedError

    def advance(self, token: int) -> None:
        raise NotImplementedError


class _TextRow(_Row):
    def __init__(self, eos: int) -> None:
        self.eos, self.count = eos, 0

    def key(self, left):
        if self.count and left is not None and left <= 1:
            return ("tok", self.eos)  # the last token left must close the answer
        return ("text", self.count > 0)

    def advance(self, token):
        self.count += 1


class _LabelRow(_Row):
    def __init__(self, trie: _Trie, eos: int) -> None:
        self.trie, self.eos, self.node = trie, eos, 0

    def key(self, left):
        trie = self.trie
        closing = left is not None and left <= trie.finish[self.node]
        terminal = trie.terminal[self.node]
        ids = list(trie.children[self.node])
        if closing:  # only what still fits; if nothing does, anything (the answer is cut)
            fitting = [t for t in ids if trie.finish[trie.children[self.node][t]] < left]
            ids = fitting if fitting or terminal else ids
        return ("ids", *sorted(ids + [self.eos] * terminal))

    def advance(self, token):
        self.node = self.trie.children[self.node][token]


class _AudioRow(_Row):
    """start -> span (pos tokens so far) -> [sep -> start -> span ...] -> eos.

    With a token budget, each span gets a frame limit when it opens: the tokens left after
    the fixed markers, shared evenly among the spans still to write (so ss's two sources get
    equal room), rounded down to whole frames. At the limit only <|audio_end|> remains."""

    def __init__(self, spans: int, frame_width: int, vocab: MultimodalVocab) -> None:
        self.phase, self.spans_left, self.pos, self.width = "start", spans, 0, frame_width
        self.limit: int | None = None
        self.forced = {"start": vocab.audio_start_id, "sep": vocab.sep_id, "eos": vocab.eos_task_id}
        self.end = vocab.audio_end_id

    def key(self, left):
        if self.phase != "span":
            return ("tok", self.forced[self.phase])
        if self.limit is None and left is not None:
            # markers still to come: this span's end, sep + start + end per later span, eos
            markers = 1 + 3 * (self.spans_left - 1) + 1
            room = (left - markers) // self.spans_left
            self.limit = max(self.width, room // self.width * self.width)
        at_boundary = self.pos > 0 and self.pos % self.width == 0
        if at_boundary and self.limit is not None and self.pos >= self.limit:
            return ("tok", self.end)
        return ("audio", self.pos % self.width, at_boundary)

    def advance(self, token):
        if self.phase == "span" and token == self.end:
            self.spans_left -= 1
            self.phase = "sep" if self.spans_left else "eos"
        elif self.phase == "span":
            self.pos += 1
        elif self.phase == "start":
            self.phase, self.pos, self.limit = "span", 0, None
        elif self.phase == "sep":
            self.phase = "start"


class ConstrainedLogitsProcessor(LogitsProcessor):
    """Masks every id the answer grammar forbids, row by row (a stateful LogitsProcessor).

    Call it once per step with all ids so far `input_ids [B, L + t]` and the step's
    `scores [B, V]`; from the second call on it reads the previous step's tokens from
    `input_ids[:, -1]`. Rows that emitted <|eos_task|> allow only `pad_id` afterwards."""

    def __init__(
        self, grammar: AnswerGrammar, rows: list[_Row], max_new_tokens: int | None, pad_id: int
    ) -> None:
        self.grammar, self.rows = grammar, rows
        self.max_new_tokens, self.pad_id = max_new_tokens, pad_id
        self.done = [False] * len(rows)
        self.step, self._length = 0, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != len(self.rows):
            raise ValueError(f"processor built for {len(self.rows)} rows, got {input_ids.shape[0]}")
        if self._length is not None:
            if input_ids.shape[1] != self._length + 1:
                raise ValueError("ConstrainedLogitsProcessor must see every step exactly once")
            self._advance(input_ids[:, -1].tolist())
        self._length = input_ids.shape[1]
        left = None if self.max_new_tokens is None else self.max_new_tokens - self.step
        self.step += 1
        indices = [
            self.grammar.mask_index(("tok", self.pad_id) if done else row.key(left))
            for row, done in zip(self.rows, self.done, strict=True)
        ]
        allowed = self.grammar.masks(indices, scores.shape[-1], scores.device)
        return scores.masked_fill(~allowed, float("-inf"))

    def _advance(self, tokens: list[int]) -> None:
        eos = self.grammar.vocab.eos_task_id
        for i, token in enumerate(tokens):
            if self.done[i]:
                continue
            if token == eos:
                self.done[i] = True
            else:
                self.rows[i].advance(token)


# ---- the generation loop ----------------------------------------------------------------


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
    """One left-padded batch through the KV-cached loop -> generated ids per row."""
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
    out = model(
        **extra,
        input_ids=sequence[:, :width],
        attention_mask=mask,
        position_ids=positions,
        past_key_values=DynamicCache(config=model.config),  # grows by concatenation
        use_cache=True,
        logits_to_keep=1,
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
        done |= token == eos_id
        steps = step + 1
        if bool(done.all()) or steps == cfg.max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=next_position,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
        next_position = next_position + 1
    results = []
    for row in sequence[:, width : width + steps].tolist():
        results.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return results


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
    restricts text answers to given strings. `features` (continuous-input models,
    mmllm.continuous): each prompt's feature frames [n, D], one per <|audio_embed|>.
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


# ---- decoding generated ids -------------------------------------------------------------


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
    A trailing incomplete frame is dropped; a non-audio id inside a span is a ValueError."""
    layout = get_pattern(pattern)
    num_codebooks = vocab.block(tokenizer).num_codebooks
    width = num_codebooks if pattern == "flatten" else 1
    codes = []
    for span in audio_spans(ids, vocab):
        tokens = torch.tensor(span[: len(span) // width * width], dtype=torch.long)
        grid = layout.revert(tokens, num_codebooks)  # [K, F] ids ([1, F] for first)
        codebook = 0 if pattern == "first" else None
        codes.append(vocab.codes_from_ids(tokenizer, grid, codebook=codebook))
    return codes


# ---- checkpoints and prompts ------------------------------------------------------------


class GenerateError(ValueError):
    """Bad input to prompting: the message names the file or field."""


@dataclass
class Checkpoint:
    """A trained checkpoint's vocab, text tokenizer and configs (the model loads on demand)."""

    directory: Path
    vocab: MultimodalVocab
    tokenizer: Any
    pattern: str
    input_config: TokenizerConfig
    output_config: TokenizerConfig
    continuous_input: bool = False  # audio_input: continuous (mmllm.continuous)
    feature_stack: int = 1

    @classmethod
    def open(cls, directory: str | Path) -> Checkpoint:
        from transformers import AutoTokenizer

        from mmllm.pretrain_config import PretrainConfig

        directory = Path(directory)
        if not directory.is_dir():
            raise GenerateError(f"checkpoint {directory}: directory not found")
        for name in (VOCAB_FILENAME, PRETRAIN_CONFIG_FILENAME):
            if not (directory / name).is_file():
                raise GenerateError(f"checkpoint {directory}: no {name} (not an mmllm checkpoint?)")
        try:
            vocab = MultimodalVocab.load(directory)
            pretrain = load_config(PretrainConfig, directory / PRETRAIN_CONFIG_FILENAME)
            section = pretrain.tokenizers
            input_config = load_config(TokenizerConfig, section.input, section.input_overrides)
            output_config = input_config
            if section.output:
                output_config = load_config(
                    TokenizerConfig, section.output, section.output_overrides
                )
            tokenizer = AutoTokenizer.from_pretrained(directory)
        except (ConfigError, ValueError, OSError) as err:
            raise GenerateError(f"checkpoint {directory}: {_one_line(err)}") from None
        continuous = pretrain.audio_input == "continuous"
        for config in (output_config,) if continuous else (input_config, output_config):
            if config.name not in vocab.blocks:
                raise GenerateError(
                    f"checkpoint {directory}: its vocab has no audio tokenizer {config.name!r} "
                    f"(has {vocab.tokenizers})"
                )
        return cls(
            directory,
            vocab,
            tokenizer,
            pretrain.data.pattern,
            input_config,
            output_config,
            continuous,
            pretrain.continuous.stack,
        )

    def renderer(self) -> TemplateRenderer:
        return TemplateRenderer(
            self.vocab,
            self.tokenizer,
            self.input_config.name,
            self.output_config.name,
            self.pattern,
            continuous_input=self.continuous_input,
            feature_stack=self.feature_stack,
        )

    def grammar(self) -> AnswerGrammar:
        return AnswerGrammar(self.vocab, self.tokenizer, self.output_config.name, self.pattern)

    def audio_tokenizer(self, which: str) -> Any:
        """Build the "input" or "output" audio tokenizer, checked against the vocab."""
        from mmllm.tokenizers.base import build_tokenizer

        config = self.input_config if which == "input" else self.output_config
        try:
            tokenizer = build_tokenizer(config)
        except (ValueError, OSError) as err:
            raise GenerateError(f"{which} tokenizer {config.name!r}: {_one_line(err)}") from None
        if which == "input" and self.continuous_input:
            return tokenizer  # features, not codes: nothing in the vocab to match
        block = self.vocab.block(config.name)
        if (tokenizer.num_codebooks, tokenizer.codebook_size) != (
            block.num_codebooks,
            block.codebook_size,
        ):
            raise GenerateError(
                f"{which} tokenizer {config.name!r} gives {tokenizer.num_codebooks} x "
                f"{tokenizer.codebook_size} codes, the checkpoint vocab {block.num_codebooks} x "
                f"{block.codebook_size}"
            )
        return tokenizer

    def load_model(self, device: str | torch.device = "cpu") -> Any:
        from mmllm.model import load_pretrained_multimodal

        model, _, _ = load_pretrained_multimodal(self.directory)
        if self.continuous_input:
            from mmllm.continuous import ContinuousInputLM, load_projector

            model = ContinuousInputLM(
                model, load_projector(self.directory), self.vocab.audio_embed_id
            )
        return model.to(device).eval()


def render_prompt(renderer: TemplateRenderer, row: dict, input_codes: Any) -> Any:
    """The generation prompt of a row that has no target (placeholder target codes/label:
    `render` builds the whole example; use `.prompt` and, for continuous input, `.features`)."""
    k = renderer.vocab.block(renderer.output_tokenizer).num_codebooks
    row = {**row, "label": row.get("label") or next(iter(SV_ANSWERS))}
    return renderer.render(row, input_codes, lambda key: np.zeros((k, 1), np.int64))


def encode_audio_file(path: str | Path, tokenizer: Any) -> np.ndarray:
    """Read an audio file (anything soundfile reads) and encode it -> codes [K, F]."""
    from mmllm.audio import load_audio

    wav, _ = load_audio(path, target_sr=tokenizer.sample_rate, name=f"input audio {path}")
    codes, frames = tokenizer.encode(torch.from_numpy(wav)[None], torch.tensor([wav.shape[0]]))
    return codes[0, :, : int(frames[0])].cpu().numpy()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def build_prompt(
    checkpoint: Checkpoint, task: str, inputs: Sequence[str], speaker: str | None = None
) -> Any:
    """The rendered prompt (`.prompt` ids, `.features` for continuous input) for one task
    from CLI-style inputs: audio file paths (sv: enrollment then trial) or, for tts, the
    text to speak (with `speaker`)."""
    codes: dict[str, np.ndarray] = {}
    if task != "tts":
        input_tokenizer = checkpoint.audio_tokenizer("input")
        keys = ["prompt#ref0", "prompt"] if task == "sv" else ["prompt"]
        for key, path in zip(keys, inputs, strict=True):
            codes[key] = encode_audio_file(path, input_tokenizer)
    row = {
        "id": "prompt",
        "task": task,
        "text": inputs[0] if task == "tts" else "",
        "label": "",
        "speaker": speaker or "",
        "words": [],
    }
    return render_prompt(checkpoint.renderer(), row, codes.__getitem__)


def _check_arguments(args: argparse.Namespace) -> None:
    """Every check that needs neither the checkpoint nor the model."""
    task = args.task
    if task not in TASKS:
        raise GenerateError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    expected = 2 if task == "sv" else 1
    if len(args.inputs) != expected:
        what = {"sv": "ENROLLMENT.wav TRIAL.wav", "tts": '"TEXT"'}.get(task, "AUDIO")
        raise GenerateError(f"task {task} takes {what}, got {len(args.inputs)} input(s)")
    if task == "tts":
        if not args.inputs[0].strip():
            raise GenerateError("tts: the text to speak is empty")
        if not args.speaker:
            raise GenerateError("tts: --speaker is required (a speaker id seen in training)")
    else:
        for path in args.inputs:
            if not Path(path).is_file():
                raise GenerateError(f"input audio {path}: file not found")
    if task in AUDIO_ANSWER_SPANS and args.out is None:
        raise GenerateError(f"task {task} writes audio: --out FILE.wav is required")


def _write_audio(spans: list[torch.Tensor], tokenizer: Any, out: Path) -> list[str]:
    """Decode each span's codes [K, F] and write out (ss: out-1.wav, out-2.wav)."""
    from mmllm.audio import write_wav

    if not spans or any(c.shape[-1] == 0 for c in spans):
        raise GenerateError("the model wrote no audio frames (raise --max-new-tokens?)")
    lines = []
    for j, codes in enumerate(spans):
        path = out if len(spans) == 1 else out.with_name(f"{out.stem}-{j + 1}{out.suffix}")
        try:
            wav, lengths = tokenizer.decode(codes[None], torch.tensor([codes.shape[-1]]))
        except (RuntimeError, ValueError) as err:  # e.g. too few frames for the decoder
            raise GenerateError(
                f"output tokenizer {tokenizer.name!r} cannot decode {codes.shape[-1]} frame(s): "
                f"{_one_line(err)}"
            ) from None
        wav = wav[0, : int(lengths[0])].float().cpu().numpy()
        write_wav(path, wav, tokenizer.sample_rate)
        lines.append(f"wrote {path} ({wav.shape[0] / tokenizer.sample_rate:.2f} s)")
    return lines


def run_cli(args: argparse.Namespace) -> list[str]:
    """The CLI's work: check, prompt, generate, decode. Returns the lines to print."""
    _check_arguments(args)
    task = args.task
    checkpoint = Checkpoint.open(args.checkpoint)
    output_tokenizer = None
    if task in AUDIO_ANSWER_SPANS:
        output_tokenizer = checkpoint.audio_tokenizer("output")
        if not output_tokenizer.can_decode:
            raise GenerateError(
                f"output tokenizer {checkpoint.output_config.name!r} cannot decode audio "
                "(vocoders come in a later step)"
            )
    rendered = build_prompt(checkpoint, task, args.inputs, args.speaker)
    prompt = rendered.prompt
    model = checkpoint.load_model(args.device)
    max_new = args.max_new_tokens
    if max_new is None:  # text: a sentence; audio: what the model's context still holds
        context = getattr(model.config, "max_position_embeddings", 1024)
        max_new = 128 if task in TEXT_ANSWER_TASKS else max(context - len(prompt), 1)
    try:
        config = GenerationConfig(
            max_new_tokens=max_new,
            batch_size=1,
            do_sample=args.sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
    except ValueError as err:
        raise GenerateError(f"generation options: {_one_line(err)}") from None
    allowed = args.allowed or (sorted(SV_ANSWERS.values()) if task == "sv" else None)
    [ids] = generate(
        model,
        [prompt],
        checkpoint.vocab,
        config,
        tasks=task,
        grammar=checkpoint.grammar(),
        allowed_texts=allowed,
        features=[rendered.features],
    )
    if task in TEXT_ANSWER_TASKS:
        return [decode_text(ids, checkpoint.tokenizer, checkpoint.vocab)]
    spans = decode_audio(ids, checkpoint.vocab, checkpoint.output_config.name, checkpoint.pattern)
    return _write_audio(spans, output_tokenizer, Path(args.out))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit code 2, like every bad input
        raise GenerateError(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m mmllm.generate",
        description="Prompt a trained mmllm checkpoint with one task.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (final/)")
    parser.add_argument("task", help=f"one of {', '.join(TASKS)}")
    parser.add_argument(
        "inputs", nargs="+", help='audio file(s) (sv: enrollment trial) or tts "text"'
    )
    parser.add_argument("--speaker", help="tts: speaker id")
    parser.add_argument("--out", help="tts/se/ss: output WAV (ss writes OUT-1 and OUT-2)")
    parser.add_argument("--allowed", nargs="+", help="restrict a text answer to these strings")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    from mmllm.audio import AudioError

    try:
        args = parser.parse_args(argv)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # keep the output to the answer
        for line in run_cli(args):
            print(line)
    except (GenerateError, AudioError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
