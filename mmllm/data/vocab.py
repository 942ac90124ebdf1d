"""The multimodal vocabulary: text ids, special tokens and audio codes in one id space.

`MultimodalVocab` is the only place that knows the id offsets (DESIGN.md, "Vocabulary
layout"); everything else asks it:

    vocab = MultimodalVocab(text_size=len(hf_tokenizer),
                            audio=[("mfcc-kmeans", 1, 100), ("encodec", 8, 1024)])
    vocab.audio_id("encodec", 3, 17)         # one code -> one id
    ids = vocab.audio_ids("encodec", codes)  # codes [..., K, F] -> ids, codebook k -> block k
    vocab.codes_from_ids("encodec", ids)     # and back
    vocab.decode_ids(ids)                    # [("text", [..]), ("special", "<|audio_start|>"),
                                             #  ("audio", "encodec", 0, 17), ...]
    vocab.save(checkpoint_dir)               # checkpoint_dir/mmllm_vocab.json

Layout, in id order:

    [0, text_size)                   the base text tokenizer's ids, untouched
    [text_size, text_size + S)       the special tokens of `SPECIAL_TOKENS`, in list order
    then, per audio tokenizer in the order given and per codebook k = 0..K-1,
    one block of `codebook_size` ids named `<|{tokenizer}_k{k}_{code}|>`

`PAD_CODE` (a frame beyond an item's length) maps to `<|pad_audio|>` and back.

The Hugging Face side: `extend_hf_tokenizer` adds the special and audio tokens to a text
tokenizer so that its ids equal the vocab's. Resizing a model to the vocab and multimodal
checkpoints live in `mmllm.modeling.model`; the small SentencePiece text tokenizer in
`mmllm.data.text_tokenizer`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmllm.corpus.schema import TASKS
from mmllm.fileio import atomic_write_text
from mmllm.tokenizers.base import PAD_CODE

VOCAB_FILENAME = "mmllm_vocab.json"


VOCAB_FORMAT = "mmllm_vocab"


VOCAB_VERSION = 1


# The special tokens, in id order (they follow the text ids). A saved vocab records its own
# list, so appending here never changes the ids of an existing checkpoint.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|audio_start|>",  # opens a span of audio tokens (input or output speech)
    "<|audio_end|>",  # closes it
    "<|text|>",  # modality tag: what follows (the answer) is text
    "<|speech|>",  # modality tag: what follows (the answer) is speech
    "<|pad_audio|>",  # no code at this step: a stream shorter than the others, delay patterns
    "<|sep|>",  # separates items of one sequence: SS sources, SV enrollment vs trial
    "<|eos_task|>",  # end of a task's answer: generation stops here
    *(f"<|task_{task}|>" for task in TASKS),  # which task the sequence is (asr, ks, ..., tts)
    "<|audio_embed|>",  # continuous input: this position's embedding is a projected feature frame
)


_TOKENIZER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


_SPECIAL_NAME = re.compile(r"^<\|[^|<>]+\|>$")


@dataclass(frozen=True)
class AudioBlock:
    """The ids of one audio tokenizer: K consecutive blocks of `codebook_size` ids."""

    tokenizer: str
    num_codebooks: int
    codebook_size: int
    offset: int  # id of code 0 of codebook 0

    @property
    def stop(self) -> int:
        return self.offset + self.num_codebooks * self.codebook_size


class MultimodalVocab:
    """Text ids, then special tokens, then one block of ids per (audio tokenizer, codebook).

    text_size:       number of ids of the base text tokenizer (`len(hf_tokenizer)`)
    audio:           (tokenizer_name, num_codebooks, codebook_size) per audio tokenizer, in
                     id order; `AudioTokenizer` objects work too (`for_tokenizers`)
    special_tokens:  defaults to `SPECIAL_TOKENS`; a loaded vocab passes its recorded list
    """

    def __init__(
        self,
        text_size: int,
        audio: Sequence[tuple[str, int, int]] = (),
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
    ) -> None:
        if not isinstance(text_size, int) or text_size <= 0:
            raise ValueError(f"text_size must be a positive int, got {text_size!r}")
        self.text_size = text_size
        self.special_tokens: tuple[str, ...] = tuple(special_tokens)
        bad = [name for name in self.special_tokens if not _SPECIAL_NAME.match(name)]
        if bad:
            raise ValueError(f"special tokens must look like <|name|>, got {bad}")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"duplicate special tokens in {list(self.special_tokens)}")
        self._special = {name: text_size + i for i, name in enumerate(self.special_tokens)}
        self.blocks: dict[str, AudioBlock] = {}
        offset = text_size + len(self.special_tokens)
        for entry in audio:
            name, num_codebooks, codebook_size = entry
            if not isinstance(name, str) or not _TOKENIZER_NAME.match(name):
                raise ValueError(
                    f"audio tokenizer name {name!r}: use letters, digits, '.', '_', '-'"
                )
            if name in self.blocks:
                raise ValueError(f"audio tokenizer {name!r} listed twice")
            for field, value in (
                ("num_codebooks", num_codebooks),
                ("codebook_size", codebook_size),
            ):
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise ValueError(
                        f"audio tokenizer {name!r}: {field} must be a positive int, got {value!r}"
                    )
            block = AudioBlock(name, num_codebooks, codebook_size, offset)
            self.blocks[name] = block
            offset = block.stop
        self.size = offset

    @classmethod
    def for_tokenizers(
        cls,
        text_size: int,
        tokenizers: Iterable[Any],
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
    ) -> MultimodalVocab:
        """Build from `AudioTokenizer` objects (their name, num_codebooks, codebook_size)."""
        return cls(
            text_size,
            [(t.name, int(t.num_codebooks), int(t.codebook_size)) for t in tokenizers],
            special_tokens,
        )

    # ---- layout -------------------------------------------------------------------------

    @property
    def tokenizers(self) -> list[str]:
        return list(self.blocks)

    @property
    def special_start(self) -> int:
        return self.text_size

    @property
    def audio_start(self) -> int:
        """First audio id (= end of the special tokens)."""
        return self.text_size + len(self.special_tokens)

    @property
    def num_added(self) -> int:
        """Ids beyond the text tokenizer's (special + audio)."""
        return self.size - self.text_size

    def block(self, tokenizer: str) -> AudioBlock:
        if tokenizer not in self.blocks:
            raise KeyError(
                f"audio tokenizer {tokenizer!r} is not in the vocab; known: {self.tokenizers}"
            )
        return self.blocks[tokenizer]

    def _check_codebook(self, block: AudioBlock, codebook: int) -> None:
        if not 0 <= codebook < block.num_codebooks:
            raise ValueError(
                f"audio tokenizer {block.tokenizer!r}: codebook {codebook} out of range "
                f"[0, {block.num_codebooks})"
            )

    def audio_range(self, tokenizer: str, codebook: int | None = None) -> tuple[int, int]:
        """(start, stop) ids of one codebook, or of all the tokenizer's codebooks if None."""
        block = self.block(tokenizer)
        if codebook is None:
            return block.offset, block.stop
        self._check_codebook(block, codebook)
        start = block.offset + codebook * block.codebook_size
        return start, start + block.codebook_size

    # ---- special tokens -----------------------------------------------------------------

    def special_id(self, name: str) -> int:
        """Id of a special token, by full name (`<|audio_start|>`) or bare (`audio_start`)."""
        key = name if name.startswith("<|") else f"<|{name}|>"
        if key not in self._special:
            raise KeyError(f"unknown special token {name!r}; known: {list(self.special_tokens)}")
        return self._special[key]

    def task_id(self, task: str) -> int:
        return self.special_id(f"task_{task}")

    @property
    def audio_start_id(self) -> int:
        return self.special_id("audio_start")

    @property
    def audio_end_id(self) -> int:
        return self.special_id("audio_end")

    @property
    def text_tag_id(self) -> int:
        return self.special_id("text")

    @property
    def speech_tag_id(self) -> int:
        return self.special_id("speech")

    @property
    def pad_audio_id(self) -> int:
        return self.special_id("pad_audio")

    @property
    def sep_id(self) -> int:
        return self.special_id("sep")

    @property
    def audio_embed_id(self) -> int:
        return self.special_id("audio_embed")

    @property
    def eos_task_id(self) -> int:
        return self.special_id("eos_task")

    # ---- audio codes <-> ids ------------------------------------------------------------

    def audio_id(self, tokenizer: str, codebook: int, code: int) -> int:
        """Id of one code of one codebook (`PAD_CODE` -> `<|pad_audio|>`)."""
        block = self.block(tokenizer)
        self._check_codebook(block, codebook)
        if code == PAD_CODE:
            return self.pad_audio_id
        if not 0 <= code < block.codebook_size:
            raise ValueError(
                f"audio tokenizer {tokenizer!r} codebook {codebook}: code {code} out of range "
                f"[0, {block.codebook_size})"
            )
        return block.offset + codebook * block.codebook_size + int(code)

    def audio_ids(self, tokenizer: str, codes: Any, codebook: int | None = None) -> torch.Tensor:
        """Codes -> ids (int64). codes: [..., K, F] (codebook k -> block k), or any shape
        when `codebook` is given. `PAD_CODE` entries become `<|pad_audio|>`."""
        block = self.block(tokenizer)
        codes = torch.as_tensor(codes)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise TypeError(
                f"audio tokenizer {tokenizer!r}: codes must be integers, got {codes.dtype}"
            )
        codes = codes.long()
        offsets = self._offsets(block, codes, codebook)
        pad = codes == PAD_CODE
        bad = ~pad & ((codes < 0) | (codes >= block.codebook_size))
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            k = codebook if codebook is not None else where[-2]
            raise ValueError(
                f"audio tokenizer {tokenizer!r} codebook {k}: code {int(codes[where])} at index "
                f"{list(where)} out of range [0, {block.codebook_size})"
            )
        return torch.where(pad, torch.full_like(codes, self.pad_audio_id), codes + offsets)

    def codes_from_ids(self, tokenizer: str, ids: Any, codebook: int | None = None) -> torch.Tensor:
        """Inverse of `audio_ids`: ids [..., K, F] (or any shape with `codebook`) -> codes.
        `<|pad_audio|>` becomes `PAD_CODE`; an id outside its codebook's block is an error."""
        block = self.block(tokenizer)
        ids = torch.as_tensor(ids).long()
        offsets = self._offsets(block, ids, codebook)
        codes = ids - offsets
        pad = ids == self.pad_audio_id
        bad = ~pad & ((codes < 0) | (codes >= block.codebook_size))
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            k = codebook if codebook is not None else where[-2]
            value = int(ids[where])
            raise ValueError(
                f"id {value} at index {list(where)} is not a code of audio tokenizer {tokenizer!r} "
                f"codebook {k} (ids {list(self.audio_range(tokenizer, k))}); it is "
                f"{self.describe_id(value)}"
            )
        return torch.where(pad, torch.full_like(codes, PAD_CODE), codes)

    def _offsets(
        self, block: AudioBlock, values: torch.Tensor, codebook: int | None
    ) -> torch.Tensor:
        """Per-entry id offset of `values` ([..., K, F], or any shape for one codebook)."""
        if codebook is not None:
            self._check_codebook(block, codebook)
            return torch.tensor(block.offset + codebook * block.codebook_size, device=values.device)
        if values.dim() < 2 or values.shape[-2] != block.num_codebooks:
            raise ValueError(
                f"audio tokenizer {block.tokenizer!r}: expected codes [..., K={block.num_codebooks}, F], "
                f"got shape {list(values.shape)} (pass codebook= for a single codebook)"
            )
        ks = torch.arange(block.num_codebooks, device=values.device)
        return (block.offset + ks * block.codebook_size).view(-1, 1)

    # ---- ids -> meaning -----------------------------------------------------------------

    def describe_id(self, token_id: int) -> tuple:
        """("text", id) / ("special", name) / ("audio", tokenizer, codebook, code)."""
        token_id = int(token_id)
        if 0 <= token_id < self.text_size:
            return ("text", token_id)
        if self.text_size <= token_id < self.audio_start:
            return ("special", self.special_tokens[token_id - self.text_size])
        for block in self.blocks.values():
            if block.offset <= token_id < block.stop:
                k, code = divmod(token_id - block.offset, block.codebook_size)
                return ("audio", block.tokenizer, k, code)
        raise ValueError(f"id {token_id} out of range [0, {self.size}) of the vocab")

    def token_name(self, token_id: int) -> str | None:
        """The added token's string (special or audio), None for a text id."""
        kind = self.describe_id(token_id)
        if kind[0] == "text":
            return None
        if kind[0] == "special":
            return kind[1]
        return audio_token_name(*kind[1:])

    def decode_ids(self, ids: Any) -> list[tuple]:
        """Ids -> segments, in order: ("text", [consecutive text ids]), ("special", name),
        ("audio", tokenizer, codebook, code) (one per audio id)."""
        segments: list[tuple] = []
        for token_id in torch.as_tensor(ids).reshape(-1).tolist():
            kind = self.describe_id(token_id)
            if kind[0] == "text":
                if segments and segments[-1][0] == "text":
                    segments[-1][1].append(token_id)
                else:
                    segments.append(("text", [token_id]))
            else:
                segments.append(kind)
        return segments

    def added_tokens(self) -> list[str]:
        """Names of every id beyond the text ids, in id order (special, then audio)."""
        names = list(self.special_tokens)
        for block in self.blocks.values():
            for k in range(block.num_codebooks):
                names.extend(
                    audio_token_name(block.tokenizer, k, code)
                    for code in range(block.codebook_size)
                )
        return names

    # ---- persistence --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "text_size": self.text_size,
            "special_tokens": list(self.special_tokens),
            "audio": [
                {
                    "tokenizer": b.tokenizer,
                    "num_codebooks": b.num_codebooks,
                    "codebook_size": b.codebook_size,
                    "offset": b.offset,
                }
                for b in self.blocks.values()
            ],
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> MultimodalVocab:
        """Rebuild a vocab; refuses a dict whose recorded offsets/size do not match."""
        if data.get("format") != VOCAB_FORMAT or data.get("version") != VOCAB_VERSION:
            raise ValueError(
                f"{source}: not an {VOCAB_FORMAT} v{VOCAB_VERSION} file "
                f"(format={data.get('format')!r}, version={data.get('version')!r})"
            )
        try:
            vocab = cls(
                data["text_size"],
                [(a["tokenizer"], a["num_codebooks"], a["codebook_size"]) for a in data["audio"]],
                data["special_tokens"],
            )
        except KeyError as err:
            raise ValueError(f"{source}: missing key {err}") from None
        recorded = [a.get("offset") for a in data["audio"]]
        actual = [b.offset for b in vocab.blocks.values()]
        if recorded != actual or data.get("size") != vocab.size:
            raise ValueError(
                f"{source}: recorded offsets {recorded} / size {data.get('size')} do not match "
                f"the layout {actual} / {vocab.size}"
            )
        return vocab

    def save(self, directory: str | Path) -> Path:
        """Write `directory/mmllm_vocab.json` atomically."""
        path = Path(directory) / VOCAB_FILENAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> MultimodalVocab:
        path = Path(directory) / VOCAB_FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {VOCAB_FILENAME} (not an mmllm checkpoint?)")
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MultimodalVocab) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        audio = ", ".join(
            f"{b.tokenizer}: {b.num_codebooks}x{b.codebook_size} @{b.offset}"
            for b in self.blocks.values()
        )
        return (
            f"MultimodalVocab(text={self.text_size}, special={len(self.special_tokens)}, "
            f"audio=[{audio}], size={self.size})"
        )


def audio_token_name(tokenizer: str, codebook: int, code: int) -> str:
    return f"<|{tokenizer}_k{codebook}_{code}|>"


def extend_hf_tokenizer(hf_tokenizer: Any, vocab: MultimodalVocab) -> Any:
    """Add the vocab's special and audio tokens to `hf_tokenizer` (in place, also returned)
    as added special tokens, in id order, and check their ids equal the vocab's.

    The tokenizer must have exactly `vocab.text_size` tokens (or already be extended with
    this vocab, then nothing is added). Added special tokens are dropped by
    `decode(..., skip_special_tokens=True)`.
    """
    names = vocab.added_tokens()
    current = len(hf_tokenizer)
    if current == vocab.size and hf_tokenizer.convert_tokens_to_ids(names[-1]) == vocab.size - 1:
        _check_hf_ids(hf_tokenizer, vocab, names)
        return hf_tokenizer
    if current != vocab.text_size:
        raise ValueError(
            f"tokenizer has {current} tokens but the vocab's text_size is {vocab.text_size}; "
            "build the vocab with text_size=len(tokenizer) of the unextended tokenizer"
        )
    clash = [n for n in names if n in hf_tokenizer.get_vocab()]
    if clash:
        raise ValueError(f"tokenizer already has tokens named like the vocab's: {clash[:5]}")
    from tokenizers import AddedToken

    added = hf_tokenizer.add_tokens(
        [AddedToken(n, special=True, normalized=False) for n in names], special_tokens=True
    )
    if added != len(names):
        raise RuntimeError(f"tokenizer added {added} of {len(names)} tokens")
    _check_hf_ids(hf_tokenizer, vocab, names)
    return hf_tokenizer


def _check_hf_ids(hf_tokenizer: Any, vocab: MultimodalVocab, names: list[str]) -> None:
    ids = hf_tokenizer.convert_tokens_to_ids(names)
    expected = list(range(vocab.text_size, vocab.size))
    if ids != expected or len(hf_tokenizer) != vocab.size:
        first = next(
            (i for i, (a, b) in enumerate(zip(ids, expected, strict=True)) if a != b), None
        )
        detail = (
            f"{names[first]!r} got id {ids[first]}, vocab says {expected[first]}"
            if first is not None
            else ""
        )
        raise AssertionError(
            f"tokenizer ids do not match the vocab (len {len(hf_tokenizer)} vs {vocab.size}) {detail}"
        )
