"""Multi-codebook patterns: one item's codes `[K, F]` <-> the token layout a language model sees.

A tokenizer gives int64 codes `[K, F]` per item (K codebooks, F frames; trim the batch's
`PAD_CODE` frames to the item's `frame_lengths[b]` first). A pattern lays them out for the
model and reverts the layout exactly:

    pattern = get_pattern("delay")
    tokens = pattern.build(codes, fill=pad_id)        # [K, F + K - 1]
    codes_back = pattern.revert(tokens, num_codebooks=K)   # [K, F], equal to codes

Worked examples with K = 2 codebooks a, b and F = 3 frames, codes = [[a0, a1, a2], [b0, b1, b2]]:

`flatten` -- K tokens per frame, frame-major, one stream of F * K tokens:

    build  -> [a0, b0, a1, b1, a2, b2]                      shape [F * K]
    revert -> [[a0, a1, a2], [b0, b1, b2]]                  shape [K, F]

`delay` (MusicGen) -- K parallel streams of F + K - 1 steps; stream k is codebook k shifted
right by k steps, and the steps before the shift and after the end hold `fill`
(here fill = -1). The model sums the K embeddings of a step and predicts with K heads:

    build  -> [[a0, a1, a2, -1],
               [-1, b0, b1, b2]]                            shape [K, F + K - 1]
    revert -> [[a0, a1, a2], [b0, b1, b2]]                  shape [K, F] (fills dropped)

`depth` (Moshi / Sesame CSM) -- one model step per frame holding all K codes: the backbone
reads the frame's K embeddings summed and predicts codebook 0 of the next frame; a small
depth transformer predicts codebooks 1..K-1 of that frame from the backbone's state:

    build  -> [[a0, a1, a2], [b0, b1, b2]]                  shape [K, F]
    revert -> [[a0, a1, a2], [b0, b1, b2]]                  shape [K, F]

`delay` and `depth` are the multi-stream patterns (`MULTI_STREAM`): the templates render one
`<|audio_embed|>` placeholder per step and hand over the step's K ids as a row of
`Rendered.features` (`build(...).T`, `[steps, K]`); `mmllm.modeling.multicodebook` embeds and
predicts them.

`first` -- codebook 0 only, one stream of F tokens. Lossy for K > 1: revert gives back only
codebook 0, as `[1, F]`, whatever `num_codebooks` is:

    build  -> [a0, a1, a2]                                  shape [F]
    revert -> [[a0, a1, a2]]                                shape [1, F]

`sequence_length(F, K)` is the number of model steps: the last dimension of `build`'s output
(F * K, F + K - 1, F, F).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

PATTERNS = ("flatten", "delay", "first", "depth")


MULTI_STREAM = ("delay", "depth")  # K ids per model step (one placeholder + a row of K ids)


def _check_codes(codes: torch.Tensor) -> tuple[int, int]:
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor [K, F], got {type(codes).__name__}")
    if codes.dim() != 2:
        raise ValueError(f"codes must be [K, F] (one item), got shape {tuple(codes.shape)}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
    k, f = codes.shape
    if k < 1:
        raise ValueError(f"codes need at least one codebook, got shape {tuple(codes.shape)}")
    return k, f


def _check_counts(num_frames: int, num_codebooks: int) -> None:
    if num_codebooks < 1:
        raise ValueError(f"num_codebooks must be >= 1, got {num_codebooks}")
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")


def _check_tokens(tokens: torch.Tensor, dim: int, what: str) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor {what}, got {type(tokens).__name__}")
    if tokens.dim() != dim:
        raise ValueError(f"tokens must be {what}, got shape {tuple(tokens.shape)}")


class CodebookPattern(ABC):
    """Layout of one item's codes `[K, F]` as model tokens, and its exact inverse."""

    name: str

    @abstractmethod
    def build(self, codes: torch.Tensor, fill: int) -> torch.Tensor:
        """Codes `[K, F]` -> tokens; `fill` is used only where the layout has gaps (delay)."""

    @abstractmethod
    def revert(self, tokens: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """Tokens from `build` -> codes `[K, F]` (`[1, F]` for `first`)."""

    @abstractmethod
    def sequence_length(self, num_frames: int, num_codebooks: int) -> int:
        """Number of model steps for F frames of K codebooks (last dim of `build`)."""

    @abstractmethod
    def num_streams(self, num_codebooks: int) -> int:
        """Parallel token streams per step: K for `delay` and `depth`, 1 otherwise."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FlattenPattern(CodebookPattern):
    """K tokens per frame, frame-major: `[K, F]` -> `[F * K]`."""

    name = "flatten"

    def build(self, codes: torch.Tensor, fill: int) -> torch.Tensor:
        _check_codes(codes)
        return codes.t().reshape(-1).clone()

    def revert(self, tokens: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        _check_tokens(tokens, 1, "[F * K]")
        _check_counts(0, num_codebooks)
        n = tokens.shape[0]
        if n % num_codebooks:
            raise ValueError(
                f"flatten tokens of shape ({n},) do not split into {num_codebooks} codebooks"
            )
        return tokens.reshape(n // num_codebooks, num_codebooks).t().contiguous()

    def sequence_length(self, num_frames: int, num_codebooks: int) -> int:
        _check_counts(num_frames, num_codebooks)
        return num_frames * num_codebooks

    def num_streams(self, num_codebooks: int) -> int:
        return 1


class DelayPattern(CodebookPattern):
    """MusicGen delay: stream k is codebook k shifted by k steps, `[K, F]` -> `[K, F + K - 1]`."""

    name = "delay"

    def build(self, codes: torch.Tensor, fill: int) -> torch.Tensor:
        k, f = _check_codes(codes)
        out = codes.new_full((k, f + k - 1), int(fill))
        for i in range(k):
            out[i, i : i + f] = codes[i]
        return out

    def revert(self, tokens: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        _check_tokens(tokens, 2, "[K, F + K - 1]")
        _check_counts(0, num_codebooks)
        k, steps = tokens.shape
        if k != num_codebooks or steps < k - 1:
            raise ValueError(
                f"delay tokens must be [K, F + K - 1] with K = {num_codebooks}, "
                f"got shape {tuple(tokens.shape)}"
            )
        f = steps - k + 1
        return torch.stack([tokens[i, i : i + f] for i in range(k)])

    def sequence_length(self, num_frames: int, num_codebooks: int) -> int:
        _check_counts(num_frames, num_codebooks)
        return num_frames + num_codebooks - 1

    def num_streams(self, num_codebooks: int) -> int:
        return num_codebooks


class FirstPattern(CodebookPattern):
    """Codebook 0 only: `[K, F]` -> `[F]`. Lossy for K > 1; revert gives `[1, F]`."""

    name = "first"

    def build(self, codes: torch.Tensor, fill: int) -> torch.Tensor:
        _check_codes(codes)
        return codes[0].clone()

    def revert(self, tokens: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        _check_tokens(tokens, 1, "[F]")
        _check_counts(0, num_codebooks)
        return tokens.unsqueeze(0).clone()

    def sequence_length(self, num_frames: int, num_codebooks: int) -> int:
        _check_counts(num_frames, num_codebooks)
        return num_frames

    def num_streams(self, num_codebooks: int) -> int:
        return 1


class DepthPattern(CodebookPattern):
    """One step per frame with all K codes (a depth transformer writes codebooks 1..K-1):
    `[K, F]` -> `[K, F]`, the identity layout."""

    name = "depth"

    def build(self, codes: torch.Tensor, fill: int) -> torch.Tensor:
        _check_codes(codes)
        return codes.clone()

    def revert(self, tokens: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        _check_tokens(tokens, 2, "[K, F]")
        _check_counts(0, num_codebooks)
        if tokens.shape[0] != num_codebooks:
            raise ValueError(
                f"depth tokens must be [K, F] with K = {num_codebooks}, "
                f"got shape {tuple(tokens.shape)}"
            )
        return tokens.clone()

    def sequence_length(self, num_frames: int, num_codebooks: int) -> int:
        _check_counts(num_frames, num_codebooks)
        return num_frames

    def num_streams(self, num_codebooks: int) -> int:
        return num_codebooks


_REGISTRY: dict[str, type[CodebookPattern]] = {
    "flatten": FlattenPattern,
    "delay": DelayPattern,
    "first": FirstPattern,
    "depth": DepthPattern,
}


assert tuple(_REGISTRY) == PATTERNS


def get_pattern(name: str) -> CodebookPattern:
    """The pattern called `name` (one of `PATTERNS`)."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(
            f"unknown codebook pattern {name!r}; known patterns: {', '.join(PATTERNS)}"
        ) from None
