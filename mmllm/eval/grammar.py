"""The answer grammar of prompted tasks: which ids each row may generate next.

    grammar = AnswerGrammar(vocab, hf_tokenizer, output_tokenizer="mfcc-kmeans", pattern="flatten")
    processor = grammar.processor(tasks, allowed_texts, max_new_tokens)   # one per batch
    scores = processor(ids_so_far, scores)                                # forbidden -> -inf

Answer grammar per task (what the constraint allows, token by token):

    asr ks ic er sid sv   TEXT+ <|eos_task|>      TEXT = ids [0, text_size) minus the text
                                                 tokenizer's own specials (<unk> <s> </s> <pad>)
      with allowed_texts  one of the given strings' token sequences, then <|eos_task|>
    tts se                <|audio_start|> AUDIO <|audio_end|> <|eos_task|>
    ss                    <|audio_start|> AUDIO <|audio_end|> <|sep|> <|audio_start|> AUDIO <|audio_end|> <|eos_task|>

Inside AUDIO only the output tokenizer's codes of the pattern's codebook at that position are
allowed (`flatten`: codebook = position mod K; `first`: codebook 0), and <|audio_end|> only
after a whole number (>= 1) of frames. The multi-stream patterns (`delay`, `depth`; one step
per frame, mmllm.modeling.multicodebook) constrain codebook 0 of each step, which the LLM's
head writes: `depth` allows codebook 0's codes and <|audio_end|> after >= 1 frame; `delay`
(K > 1) allows codebook 0's codes and, after >= 1 frame, <|pad_audio|> (codebook 0 has
ended), then forces <|pad_audio|> for the K - 2 steps the other codebooks still write and
<|audio_end|> after them (`_DelayAudioRow.active` says which streams a step writes).
Given `max_new_tokens`, the constraint also closes open answers in time (text: eos as the
last token; labels: only labels that still fit; audio: each span ends by its share of the
budget), so every row ends well formed whenever the budget allows the shortest answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from mmllm.corpus.schema import TASKS
from mmllm.data.patterns import PATTERNS
from mmllm.data.vocab import MultimodalVocab

TEXT_ANSWER_TASKS = ("asr", "ks", "ic", "er", "sid", "sv")


AUDIO_ANSWER_SPANS = {"tts": 1, "se": 1, "ss": 2}  # audio spans in the answer


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
        if pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {pattern!r}; known: {PATTERNS}")
        self.vocab, self.text_tokenizer, self.pattern = vocab, text_tokenizer, pattern
        self.output_tokenizer = output_tokenizer or (vocab.tokenizers[-1] if vocab.blocks else None)
        block = vocab.block(self.output_tokenizer) if self.output_tokenizer else None
        self.num_codebooks = block.num_codebooks if block else 1
        # tokens per frame inside a span: flatten writes K codebooks per frame, the others
        # one (first: codebook 0; delay / depth: codebook 0, the model adds the rest)
        self.frame_width = self.num_codebooks if pattern == "flatten" else 1
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
        ("text", allow_eos) | ("tok", id) | ("audio", codebook, allow_end) | ("ids", ids...)
        | ("codes", codebook, stop_id or -1): the codebook's codes and one stop id."""
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
            elif key[0] == "codes":
                start, stop = v.audio_range(self.output_tokenizer, key[1])
                row[start:stop] = True
                if key[2] >= 0:
                    row[key[2]] = True
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
                spans = AUDIO_ANSWER_SPANS[task]
                if self.pattern == "delay" and self.num_codebooks > 1:
                    rows.append(_DelayAudioRow(spans, self.num_codebooks, self.vocab))
                else:
                    rows.append(_AudioRow(spans, self.frame_width, self.vocab))
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


class _DelayAudioRow(_AudioRow):
    """A `delay` span (K > 1) written one step (K ids) at a time: codebook 0's codes; once
    >= 1 frame is written, <|pad_audio|> may end codebook 0 (the stop step); then K - 2
    forced pads while codebooks 1..K-1 write their last codes, then <|audio_end|>.

    `pos` counts the span's steps; `ended` is the stop step. With a budget, a span's frames
    are limited to its share of the tokens left minus the K - 1 steps of the delay tail."""

    def __init__(self, spans: int, num_codebooks: int, vocab: MultimodalVocab) -> None:
        super().__init__(spans, 1, vocab)
        self.num_codebooks, self.pad = num_codebooks, vocab.pad_audio_id
        self.ended: int | None = None

    def key(self, left):
        if self.phase != "span":
            return ("tok", self.forced[self.phase])
        if self.ended is not None:
            tail_done = self.pos >= self.ended + self.num_codebooks - 1
            return ("tok", self.end if tail_done else self.pad)
        if self.limit is None and left is not None:
            markers = 1 + 3 * (self.spans_left - 1) + 1
            room = (left - markers) // self.spans_left
            self.limit = max(1, room - (self.num_codebooks - 1))
        if self.limit is not None and self.pos >= self.limit:
            return ("tok", self.pad)
        return ("codes", 0, self.pad if self.pos > 0 else -1)

    def active(self) -> list[bool]:
        """Streams 1..K-1 that hold a code at the step being written (the others a pad):
        stream k starts k steps into the span and ends k steps after codebook 0."""
        step, ended = self.pos, self.ended
        return [
            k <= step and (ended is None or step < ended + k) for k in range(1, self.num_codebooks)
        ]

    def advance(self, token):
        if self.phase == "span" and token == self.pad:
            self.ended = self.pos if self.ended is None else self.ended
            self.pos += 1
            return
        if self.phase == "start":
            self.ended = None
        super().advance(token)


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
