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

Why a hand-written loop over the KV cache rather than `model.generate`: the answer
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

The prompting CLI (`mmllm generate --checkpoint DIR TASK INPUT...`) lives in
`mmllm.eval.prompting`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessor

from mmllm.config import config_dataclass
from mmllm.corpus.schema import TASKS
from mmllm.data.patterns import get_pattern
from mmllm.data.vocab import MultimodalVocab

TEXT_ANSWER_TASKS = ("asr", "ks", "ic", "er", "sid", "sv")


AUDIO_ANSWER_SPANS = {"tts": 1, "se": 1, "ss": 2}  # audio spans in the answer


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
    cache_key = cache_argument(model)
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
        done |= token == eos_id
        steps = step + 1
        if bool(done.all()) or steps == cfg.max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=next_position,
            use_cache=True,
            **{cache_key: getattr(out, cache_key)},
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
