"""Every prompt format in one place: corpus rows -> (prompt ids, target ids).

Task rows (prompt -> target; AUDIO(x) = <|audio_start|> codes of x <|audio_end|>):

    asr          <|task_asr|> AUDIO(in) <|text|>                      -> transcript <|eos_task|>
    ks ic er sid <|task_x|>   AUDIO(in) <|text|>                      -> label <|eos_task|>
    sv           <|task_sv|>  AUDIO(enrollment) <|sep|> AUDIO(in) <|text|> -> yes|no <|eos_task|>
    tts          <|task_tts|> <|text|> transcript <|sep|> speaker <|speech|> -> AUDIO(out) <|eos_task|>
    se           <|task_se|>  AUDIO(noisy) <|speech|>                 -> AUDIO(clean) <|eos_task|>
    ss           <|task_ss|>  AUDIO(mixture) <|speech|>      -> AUDIO(source 1) <|sep|> AUDIO(source 2) <|eos_task|>

Unconditional LM documents (loss on every token): `text` (<|text|> words <|eos_task|>),
`audio` (<|speech|> AUDIO <|eos_task|>) and `interleaved`, SpiritLM-style: the utterance is
cut at word boundaries (from the corpus alignments) into spans of 1-5 words that alternate
between <|text|> words and <|speech|> AUDIO of the frames those words cover.

Input audio uses the `input_tokenizer`'s codes, output audio the `output_tokenizer`'s (they
may differ, e.g. semantic in, compression out). `audio_input` says how input audio enters
(mmllm.modeling.continuous): `discrete` as pattern-ordered tokens; `continuous` (the input lookups
return features [D, F] instead of codes) and `summed` as <|audio_start|>, one <|audio_embed|>
placeholder per frame, <|audio_end|>, with `Rendered.features` holding one row per
placeholder, in order: the stacked feature frames [n, D * feature_stack] (float32), or the
vocab ids of each frame's K codes [n, K] (int64) whose embeddings are summed. Audio answers
are always tokens of the output tokenizer. Codes are laid out by a codebook pattern
(mmllm.data.patterns): `flatten` and `first` as tokens; the multi-stream patterns `delay` and
`depth` lay out every audio span, input and answer, as one <|audio_embed|> placeholder per
step whose row in `Rendered.features` is the step's K vocab ids ([steps, K] int64, delay gaps
= <|pad_audio|>; mmllm.modeling.multicodebook), so input and output tokenizer must have the
same K. The same `render` without its target is the generation prompt (eval/dasb.py,
mmllm.eval.generation).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mmllm.data.packing import Document
from mmllm.data.patterns import MULTI_STREAM, get_pattern
from mmllm.data.vocab import MultimodalVocab

CodesLookup = Callable[[str], np.ndarray]  # key ("<id>" or "<id>#ref<j>") -> codes [K, F]


LABEL_TASKS = ("ks", "ic", "er", "sid")


LM_DOCUMENTS = ("text", "audio", "interleaved")


ASR_SPAN_WORDS = 4  # longest word span of an `asr_spans` document


SV_ANSWERS = {"same": "yes", "different": "no"}


@dataclass
class Rendered:
    """A rendered example: the model reads `prompt` and must produce `target`."""

    prompt: list[int]
    target: list[int]
    loss_on_prompt: bool = False  # True for LM documents: every token is a target
    features: np.ndarray | None = None  # one row per <|audio_embed|>, in order (see above)
    prompt_rows: int = 0  # how many of them belong to the prompt (the rest: the target's)

    @property
    def prompt_features(self) -> np.ndarray | None:
        """The rows of the prompt's placeholders: what generation is given (a `delay` /
        `depth` audio answer has rows of its own, which the model is to write)."""
        if self.features is None or not self.prompt_rows:
            return None
        return self.features[: self.prompt_rows]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt + self.target

    @property
    def loss_mask(self) -> list[bool]:
        return [self.loss_on_prompt] * len(self.prompt) + [True] * len(self.target)

    def document(self, name: str, task: str) -> Document:
        return Document(
            self.input_ids, self.loss_mask, name=name, task=task, features=self.features
        )


class TemplateRenderer:
    """Renders corpus rows with one vocabulary, one text tokenizer and one codebook pattern."""

    def __init__(
        self,
        vocab: MultimodalVocab,
        text_tokenizer,
        input_tokenizer: str,
        output_tokenizer: str | None = None,
        pattern: str = "flatten",
        frame_rate_hz: float = 50.0,
        audio_input: str = "discrete",
        feature_stack: int = 1,
    ) -> None:
        self.vocab = vocab
        self.text_tokenizer = text_tokenizer
        self.input_tokenizer = input_tokenizer
        self.output_tokenizer = output_tokenizer or input_tokenizer
        self.pattern = get_pattern(pattern)
        self.frame_rate_hz = frame_rate_hz  # of the input tokenizer, to cut speech at word times
        self.audio_input = audio_input  # discrete | continuous | summed
        self.feature_stack = feature_stack
        self._features: list[np.ndarray] = []  # placeholder rows of the row being rendered
        discrete = [self.output_tokenizer]
        if audio_input != "continuous":  # continuous input gives features, not codes
            discrete.append(self.input_tokenizer)
        for name in discrete:
            vocab.block(name)  # fails early, naming the tokenizer, if the vocab lacks it
        self.multi_stream = pattern in MULTI_STREAM
        if self.multi_stream:
            if audio_input == "continuous":
                raise ValueError(
                    f"pattern {pattern!r} writes rows of codes; continuous input writes rows "
                    "of features: use discrete or summed input"
                )
            widths = {name: vocab.block(name).num_codebooks for name in discrete}
            if len(set(widths.values())) > 1:
                raise ValueError(
                    f"pattern {pattern!r} needs input and output tokenizers with the same "
                    f"number of codebooks, got {widths}"
                )

    # ------------------------------------------------------------------ pieces

    def text(self, text: str) -> list[int]:
        return list(self.text_tokenizer.encode(text, add_special_tokens=False))

    def audio_grid(self, codes: np.ndarray, tokenizer: str) -> torch.Tensor:
        """codes [K, F] -> audio vocab ids [K, F] (int64)."""
        return self.vocab.audio_ids(tokenizer, torch.as_tensor(np.asarray(codes, dtype=np.int64)))

    def audio_tokens(self, codes: np.ndarray, tokenizer: str) -> list[int]:
        """codes [K, F] -> pattern-ordered audio ids (no start/end markers)."""
        ids = self.audio_grid(codes, tokenizer)
        return self.pattern.build(ids, fill=self.vocab.pad_audio_id).reshape(-1).tolist()

    def audio(self, codes: np.ndarray, tokenizer: str) -> list[int]:
        """AUDIO(x) as tokens: <|audio_start|> ids <|audio_end|>; for `delay` / `depth`, one
        placeholder per step, the step rows [steps, K] collected for `Rendered.features`."""
        if self.multi_stream:
            grid = self.pattern.build(
                self.audio_grid(codes, tokenizer), fill=self.vocab.pad_audio_id
            )
            return self._placeholders(grid.T.numpy())
        inner = self.audio_tokens(codes, tokenizer)
        return [self.vocab.audio_start_id, *inner, self.vocab.audio_end_id]

    def _placeholders(self, rows: np.ndarray) -> list[int]:
        """<|audio_start|> + one <|audio_embed|> per row + <|audio_end|>; rows kept in order."""
        self._features.append(rows)
        inner = [self.vocab.audio_embed_id] * len(rows)
        return [self.vocab.audio_start_id, *inner, self.vocab.audio_end_id]

    def input_audio(self, codes: np.ndarray) -> list[int]:
        """AUDIO(x) of input audio: tokens (discrete) or one placeholder per frame, whose row
        (stacked features, or the frame's K vocab ids) is collected for `Rendered.features`."""
        if self.audio_input == "discrete":
            return self.audio(codes, self.input_tokenizer)
        if self.audio_input == "summed":
            rows = self.audio_grid(codes, self.input_tokenizer).T.numpy()  # [F, K]
        else:
            rows = stack_frames(codes, self.feature_stack)
        return self._placeholders(rows)

    def _with_features(self, rendered: Rendered) -> Rendered:
        """Attach (and reset) the placeholder rows collected while rendering one row (their
        dtype kept: float32 frames or int64 ids), and how many of them the prompt holds."""
        if self._features:
            rendered.features = np.concatenate(self._features)
        rendered.prompt_rows = rendered.prompt.count(self.vocab.audio_embed_id)
        self._features = []
        return rendered

    # ------------------------------------------------------------------ rows

    def render(
        self, row: dict, input_codes: CodesLookup, output_codes: CodesLookup | None = None
    ) -> Rendered:
        """One corpus row of its task -> Rendered (loss on the target only)."""
        self._features = []
        return self._with_features(self._render(row, input_codes, output_codes))

    def _render(
        self, row: dict, input_codes: CodesLookup, output_codes: CodesLookup | None
    ) -> Rendered:
        output_codes = output_codes or input_codes
        task, v = row["task"], self.vocab
        start = [v.task_id(task)]
        if task == "sv":  # rendered in sequence order: placeholder rows follow call order
            enrollment = self.input_audio(input_codes(f"{row['id']}#ref0"))
        source = self.input_audio(input_codes(row["id"])) if task != "tts" else []
        end = [v.eos_task_id]
        if task == "asr":
            return Rendered(start + source + [v.text_tag_id], self.text(row["text"]) + end)
        if task in LABEL_TASKS:
            return Rendered(start + source + [v.text_tag_id], self.text(row["label"]) + end)
        if task == "sv":
            prompt = start + enrollment + [v.sep_id] + source + [v.text_tag_id]
            return Rendered(prompt, self.text(SV_ANSWERS[row["label"]]) + end)
        if task == "tts":
            prompt = (
                start
                + [v.text_tag_id]
                + self.text(row["text"])
                + [v.sep_id]
                + self.text(row["speaker"])
            )
            target = self.audio(output_codes(row["id"]), self.output_tokenizer)
            return Rendered(prompt + [v.speech_tag_id], target + end)
        if task == "se":
            clean = self.audio(output_codes(f"{row['id']}#ref0"), self.output_tokenizer)
            return Rendered(start + source + [v.speech_tag_id], clean + end)
        if task == "ss":
            first = self.audio(output_codes(f"{row['id']}#ref0"), self.output_tokenizer)
            second = self.audio(output_codes(f"{row['id']}#ref1"), self.output_tokenizer)
            return Rendered(start + source + [v.speech_tag_id], first + [v.sep_id] + second + end)
        raise ValueError(f"row {row['id']}: no template for task {task!r}")

    # ------------------------------------------------------------------ LM documents

    def lm_document(
        self, kind: str, row: dict, input_codes: CodesLookup, seed: int | str = 0
    ) -> Rendered:
        """An unconditional document from a row with speech: text, audio or interleaved."""
        self._features = []
        return self._with_features(self._lm_document(kind, row, input_codes, seed))

    def _lm_document(
        self, kind: str, row: dict, input_codes: CodesLookup, seed: int | str
    ) -> Rendered:
        v = self.vocab
        if self.audio_input != "discrete" and kind != "text":
            raise ValueError(
                f"LM document {kind!r} predicts input audio, which {self.audio_input} input "
                "does not have as tokens; use weight 0 for it in data.mixture"
            )
        if kind == "text":
            return Rendered(
                [v.text_tag_id] + self.text(row["text"]), [v.eos_task_id], loss_on_prompt=True
            )
        if kind == "audio":
            speech = [v.speech_tag_id] + self.input_audio(input_codes(row["id"]))
            return Rendered(speech, [v.eos_task_id], loss_on_prompt=True)
        if kind == "interleaved":
            return Rendered(
                self.interleave(row, input_codes(row["id"]), seed),
                [v.eos_task_id],
                loss_on_prompt=True,
            )
        raise ValueError(f"unknown LM document kind {kind!r}; known: {LM_DOCUMENTS}")

    def span_frames(self, words: list[dict], first: int, last: int, num_frames: int) -> slice:
        """Frames of words[first:last]: from the first word's start to the next word's start
        (the pause belongs to the span) or, for the last word, to the end of the audio."""
        start = min(int(round(words[first]["start"] * self.frame_rate_hz)), num_frames)
        stop = (
            num_frames
            if last >= len(words)
            else min(int(round(words[last]["start"] * self.frame_rate_hz)), num_frames)
        )
        return slice(start, max(stop, start + 1))

    def interleave(self, row: dict, codes: np.ndarray, seed: int | str = 0) -> list[int]:
        """Word-level interleaving: spans of 1-5 words alternate text and speech (seeded per row)."""
        words = _words_of(row, "interleaving")
        rng = random.Random(f"{seed}-{row['id']}")
        ids, index, speech = [], 0, rng.random() < 0.5
        while index < len(words):
            stop = min(index + rng.randint(1, 5), len(words))
            if speech:
                frames = self.span_frames(words, index, stop, codes.shape[1])
                ids += [self.vocab.speech_tag_id] + self.input_audio(codes[:, frames])
            else:
                ids += [self.vocab.text_tag_id] + self.text(
                    " ".join(w["word"] for w in words[index:stop])
                )
            index = stop
            speech = not speech
        return ids

    def asr_span(
        self,
        row: dict,
        input_codes: CodesLookup,
        seed: int | str = 0,
        max_words: int = ASR_SPAN_WORDS,
    ) -> Rendered:
        """ASR of a seeded random span of 1..max_words consecutive words of an ASR row, cut at
        the word alignments: short clips teach which audio is which word before whole
        utterances must be aligned (rendered with the `asr` template, loss on the target)."""
        words = _words_of(row, "asr_spans")
        rng = random.Random(f"span-{seed}-{row['id']}")
        length = min(rng.randint(1, max_words), len(words))
        first = rng.randrange(len(words) - length + 1)
        codes = input_codes(row["id"])
        frames = self.span_frames(words, first, first + length, codes.shape[1])
        text = " ".join(w["word"] for w in words[first : first + length])
        return self.render({**row, "text": text}, lambda key: codes[:, frames])


def _words_of(row: dict, what: str) -> list[dict]:
    if not row["words"]:
        raise ValueError(f"row {row['id']}: {what} needs word alignments, and it has none")
    return row["words"]


def stack_frames(features: np.ndarray, stack: int) -> np.ndarray:
    """features [D, F] -> [ceil(F / stack), stack * D]: consecutive frames concatenated
    (the last group zero-padded), i.e. a frame rate `stack` times lower."""
    dim, frames = features.shape
    groups = -(-frames // stack)
    padded = np.zeros((groups * stack, dim), dtype=np.float32)
    padded[:frames] = np.asarray(features, dtype=np.float32).T
    return padded.reshape(groups, stack * dim)
