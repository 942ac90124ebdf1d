"""Sequence packing: documents into fixed-length blocks that never attend across each other.

A document is one rendered training example (a task row or an LM document): token ids and
a loss mask. `pack_documents` places documents into blocks of `block_size` tokens with
first-fit decreasing over a window of documents (little padding, deterministic), and each
block carries what the model needs to keep documents apart:

    input_ids     [L]  token ids, `pad_id` in the unused tail
    labels        [L]  the id where the loss applies, IGNORE_INDEX elsewhere (and in padding)
    position_ids  [L]  restart at 0 for every document
    document_ids  [L]  0, 1, 2, ... per document in the block, -1 for padding

`block_attention_mask(document_ids)` turns document ids into the additive 4D mask
[B, 1, L, L] (causal within a document, blocked across documents and for padding) that
Hugging Face causal LMs accept as `attention_mask`; with the restarted `position_ids`, a
document's logits are the same as if it were alone (tested). Labels are not shifted (Hugging
Face models shift them); the first position of every document is IGNORE_INDEX, because after
the shift it would be predicted from the end of the previous document.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass
class Document:
    """One example: ids [N] and loss_mask [N] (True where the token is a target)."""

    input_ids: list[int]
    loss_mask: list[bool]
    name: str = ""  # e.g. the corpus row id, for error messages
    task: str = ""
    # continuous / summed input: one row per <|audio_embed|> id (float32 frames [n, D] or
    # int64 codebook ids [n, K]; mmllm.modeling.continuous), dtype kept through packing
    features: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError(
                f"document {self.name!r}: {len(self.input_ids)} ids but {len(self.loss_mask)} loss-mask entries"
            )


@dataclass
class PackedBlock:
    input_ids: torch.Tensor  # [L] int64
    labels: torch.Tensor  # [L] int64
    position_ids: torch.Tensor  # [L] int64
    document_ids: torch.Tensor  # [L] int64
    names: list[str] = field(default_factory=list)
    features: torch.Tensor | None = None  # [n, D] placeholder rows of its documents, in order

    @property
    def used(self) -> int:
        return int((self.document_ids >= 0).sum())


def pack_documents(
    documents: Iterable[Document], block_size: int, pad_id: int, window: int = 2048
) -> Iterator[PackedBlock]:
    """Pack documents into blocks of exactly `block_size` tokens, `pack_window` over each
    run of `window` documents."""
    pending: list[Document] = []
    for document in documents:
        pending.append(document)
        if len(pending) == window:
            yield from pack_window(pending, block_size, pad_id)
            pending = []
    if pending:
        yield from pack_window(pending, block_size, pad_id)


def pack_window(documents: list[Document], block_size: int, pad_id: int) -> list[PackedBlock]:
    """Pack documents into blocks of exactly `block_size` tokens (first-fit decreasing).

    Documents longer than `block_size` raise an error naming the document: they would have to
    be cut, which a task example must never be. Empty documents are dropped."""
    for document in documents:
        if len(document.input_ids) > block_size:
            raise ValueError(
                f"document {document.name!r} ({document.task or 'lm'}) has {len(document.input_ids)} tokens, "
                f"longer than the block size {block_size}; raise block_size or shorten the example"
            )
    return list(_pack_window([d for d in documents if d.input_ids], block_size, pad_id))


def _pack_window(documents: list[Document], block_size: int, pad_id: int) -> Iterator[PackedBlock]:
    bins: list[list[Document]] = []
    free: list[int] = []
    # longest first; ties keep input order (sorted is stable), so packing is deterministic
    for document in sorted(documents, key=lambda d: -len(d.input_ids)):
        size = len(document.input_ids)
        target = next((i for i, room in enumerate(free) if room >= size), None)
        if target is None:
            bins.append([document])
            free.append(block_size - size)
        else:
            bins[target].append(document)
            free[target] -= size
    for contents in bins:
        yield _make_block(contents, block_size, pad_id)


def _make_block(documents: list[Document], block_size: int, pad_id: int) -> PackedBlock:
    input_ids = torch.full((block_size,), pad_id, dtype=torch.long)
    labels = torch.full((block_size,), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(block_size, dtype=torch.long)
    document_ids = torch.full((block_size,), -1, dtype=torch.long)
    start = 0
    for index, document in enumerate(documents):
        ids = torch.tensor(document.input_ids, dtype=torch.long)
        stop = start + ids.numel()
        input_ids[start:stop] = ids
        mask = torch.tensor(document.loss_mask, dtype=torch.bool)
        labels[start:stop] = torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX))
        labels[start] = IGNORE_INDEX  # nothing in this document precedes its first token
        position_ids[start:stop] = torch.arange(ids.numel())
        document_ids[start:stop] = index
        start = stop
    frames = [torch.from_numpy(d.features) for d in documents if d.features is not None]
    features = torch.cat(frames) if frames else None
    names = [d.name for d in documents]
    return PackedBlock(input_ids, labels, position_ids, document_ids, names, features)


def collate_blocks(blocks: list[PackedBlock]) -> dict[str, torch.Tensor]:
    """Stack blocks into a batch: input_ids, labels, position_ids, document_ids [B, L], and
    `audio_features` [n, D] (row-major order of the placeholders; float32 frames or int64
    ids) when blocks have them."""
    batch = {
        "input_ids": torch.stack([b.input_ids for b in blocks]),
        "labels": torch.stack([b.labels for b in blocks]),
        "position_ids": torch.stack([b.position_ids for b in blocks]),
        "document_ids": torch.stack([b.document_ids for b in blocks]),
    }
    frames = [b.features for b in blocks if b.features is not None]
    if frames:
        batch["audio_features"] = torch.cat(frames)
    return batch


def target_steps(
    input_ids: torch.Tensor, labels: torch.Tensor, features: torch.Tensor, placeholder: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target steps of a block or batch whose placeholders carry rows (the `delay` /
    `depth` patterns, mmllm.modeling.multicodebook): input_ids and unshifted labels [..., L],
    features [n, K] (one row per `placeholder` of input_ids, row-major) -> (where [..., L],
    True where the label is a placeholder; the rows of those steps [m, K], row-major)."""
    row_of = (input_ids == placeholder).reshape(-1).cumsum(0).reshape(input_ids.shape) - 1
    where = labels == placeholder
    return where, features[row_of[where]]


def block_attention_mask(
    document_ids: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """document_ids [B, L] -> additive mask [B, 1, L, L]: 0 where query i may attend to key j
    (same document, j <= i), the dtype's minimum elsewhere. Padding rows attend to themselves
    only, so no row is all-blocked (which would give NaN in softmax)."""
    length = document_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=document_ids.device).tril()
    same = document_ids[:, :, None] == document_ids[:, None, :]
    allowed = same & causal & (document_ids[:, None, :] >= 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=document_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=document_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def padding_waste(blocks: Iterable[PackedBlock]) -> float:
    """Fraction of block positions that hold padding."""
    used = total = 0
    for block in blocks:
        used += block.used
        total += block.input_ids.numel()
    return 1.0 - used / total if total else 0.0
