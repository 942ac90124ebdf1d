"""Multi-codebook audio as K ids per model step: the `delay` and `depth` patterns.

Templates render an audio span as <|audio_start|>, one <|audio_embed|> placeholder per
step, <|audio_end|>, and hand over the step's K vocab ids as a row of `Rendered.features`
(mmllm.data.patterns). With K = 2, codes [[a0, a1, a2], [b0, b1, b2]] (`-` = <|pad_audio|>):

    step   delay row   depth row
    0      a0  -       a0  b0
    1      a1  b0      a1  b1
    2      a2  b1      a2  b2
    3      -   b2                  codebook 0 has ended: the `-` in stream 0 is the stop signal

`MultiCodebookLM` (a `ContinuousInputLM`) reads a step as the softmax(w)-weighted sum of its
K ids' embeddings (`CodebookSum` with `pad_id`: gaps are left out, so a text position and a
one-code step embed exactly as E(id)) and predicts the next step:

    codebook 0    the LLM's own output layer at the position before (full vocabulary, so it
                  also says where the span ends: <|pad_audio|> for delay, <|audio_end|> for
                  depth and for K = 1)
    1..K-1        `audio_heads` from the same hidden state h [n, D]:
      DelayHeads        one Linear(D, C) per codebook, started from the LLM output layer's
                        rows of that codebook (same scale and init as codebook 0's)
      DepthTransformer  a small causal transformer over the frame's codebooks (Moshi, CSM):
                        x_0 = in(h) + e_0(c_0), x_j = e_j(c_j), j < K - 1 (+ a position
                        embedding); output j predicts c_{j+1}. Teacher-forced in training,
                        autoregressive over the K - 1 codebooks in generation.

The trainer (mmllm.pretrain.steps) computes codebook 0's loss with the output layer and
`audio_loss_sum` for the others. With K = 1 there are no heads and a delay / depth model is
the flattened model (same logits, tested).

Checkpoint: the LLM in HF format, `mmllm_projector.*` (the codebook weights w) and
`mmllm_audio_heads.safetensors` + `mmllm_audio_heads.json` (kind and sizes) beside it
(`save_audio_heads` / `load_audio_heads`; `mmllm.eval.prompting.Checkpoint.load_model`
assembles the three).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmllm.data.vocab import MultimodalVocab
from mmllm.fileio import atomic_write_bytes, atomic_write_text, state_dict_bytes
from mmllm.modeling.continuous import CodebookSum, ContinuousInputLM

AUDIO_HEADS_WEIGHTS = "mmllm_audio_heads.safetensors"


AUDIO_HEADS_CONFIG = "mmllm_audio_heads.json"


IGNORE_INDEX = -100


Pick = Callable[[torch.Tensor], torch.Tensor]  # scores [n, C] -> chosen codes [n]


class DelayHeads(nn.Module):
    """Codebooks 1..K-1 of a delay step, each from h alone: K - 1 Linear(width, C)."""

    def __init__(
        self, width: int, num_codebooks: int, codebook_size: int, init_rows: list | None = None
    ) -> None:
        super().__init__()
        self.config = {
            "kind": "delay",
            "width": width,
            "num_codebooks": num_codebooks,
            "codebook_size": codebook_size,
        }
        self.heads = nn.ModuleList(
            nn.Linear(width, codebook_size, bias=False) for _ in range(num_codebooks - 1)
        )
        if init_rows is not None:  # [C, width] per codebook 1..K-1: the LLM head's own rows
            with torch.no_grad():
                for head, rows in zip(self.heads, init_rows, strict=True):
                    head.weight.copy_(rows)

    def forward(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """hidden [n, D], codes [n, K] (unused: delay heads see h only) -> logits [n, K-1, C]."""
        return torch.stack([head(hidden) for head in self.heads], dim=1)

    def sample(self, hidden: torch.Tensor, first: torch.Tensor, pick: Pick) -> torch.Tensor:
        """hidden [n, D], codebook 0's codes [n] -> codes [n, K-1] of codebooks 1..K-1."""
        logits = self(hidden, first[:, None])
        return torch.stack([pick(logits[:, k]) for k in range(logits.shape[1])], dim=1)


class DepthBlock(nn.Module):
    """A pre-norm causal transformer block over a frame's codebooks, [n, j, d] -> [n, j, d].

    Written with plain Linear calls rather than nn.TransformerEncoderLayer, whose attention
    reads its output projection's weight without calling that module: DeepSpeed ZeRO-3
    gathers a partitioned weight only when its module runs, so that layer fails under it."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, j, d = x.shape
        qkv = self.qkv(self.attention_norm(x)).reshape(n, j, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [n, heads, j, d / heads]
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(n, j, d))
        return x + self.down(F.gelu(self.up(self.mlp_norm(x))))


class DepthTransformer(nn.Module):
    """Codebooks 1..K-1 of a frame from h and the frame's lower codebooks (a depth transformer)."""

    def __init__(
        self,
        width: int,
        num_codebooks: int,
        codebook_size: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        self.config = {
            "kind": "depth",
            "width": width,
            "num_codebooks": num_codebooks,
            "codebook_size": codebook_size,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
        }
        steps = max(num_codebooks - 1, 1)
        self.codebook_size = codebook_size
        self.project = nn.Linear(width, hidden_size)
        self.embed = nn.Embedding(steps * codebook_size, hidden_size)  # codebooks 0..K-2
        self.position = nn.Parameter(torch.zeros(steps, hidden_size))
        self.layers = nn.ModuleList(DepthBlock(hidden_size, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.heads = nn.ModuleList(
            nn.Linear(hidden_size, codebook_size) for _ in range(num_codebooks - 1)
        )

    def forward(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """hidden [n, D], codes [n, j] (codebook-local, j >= 1: codebooks 0..j-1 known) ->
        logits [n, j, C]: output i predicts codebook i + 1 (j = K - 1 in training)."""
        j = codes.shape[1]
        offsets = torch.arange(j, device=codes.device) * self.codebook_size
        x = self.embed(codes + offsets) + self.position[:j].to(self.embed.weight.dtype)
        first = x[:, :1] + self.project(hidden.to(self.project.weight.dtype))[:, None]
        x = torch.cat([first, x[:, 1:]], dim=1)
        for layer in self.layers:
            x = layer(x)
        y = self.norm(x)
        return torch.stack([self.heads[i](y[:, i]) for i in range(j)], dim=1)

    def sample(self, hidden: torch.Tensor, first: torch.Tensor, pick: Pick) -> torch.Tensor:
        """Codebooks 1..K-1 one after the other, each conditioned on the ones before."""
        codes = first[:, None]
        for _ in range(len(self.heads)):
            logits = self(hidden, codes)[:, -1]
            codes = torch.cat([codes, pick(logits)[:, None]], dim=1)
        return codes[:, 1:]


def build_audio_heads(
    pattern: str,
    width: int,
    num_codebooks: int,
    codebook_size: int,
    depth: dict | None = None,
    init_rows: list | None = None,
) -> nn.Module:
    """DelayHeads (pattern `delay`) or DepthTransformer (`depth`, sized by `depth`)."""
    if pattern == "delay":
        return DelayHeads(width, num_codebooks, codebook_size, init_rows)
    if pattern == "depth":
        return DepthTransformer(width, num_codebooks, codebook_size, **(depth or {}))
    raise ValueError(f"pattern {pattern!r} has no audio heads (delay or depth)")


class MultiCodebookLM(ContinuousInputLM):
    """A causal LM whose audio steps carry K codes: summed in (`CodebookSum` with the pad
    left out), codebook 0 out through the LLM's head, codebooks 1..K-1 through `audio_heads`.

    code_offsets [K]: the vocab id of code 0 of each codebook of the output tokenizer (rows
    hold vocab ids; the heads speak codebook-local codes 0..C-1)."""

    def __init__(
        self,
        lm: nn.Module,
        projector: CodebookSum,
        audio_embed_id: int,
        audio_heads: nn.Module,
        code_offsets: list[int],
        pad_id: int,
        frame_fraction: float = 1.0,
    ) -> None:
        super().__init__(lm, projector, audio_embed_id)
        self.audio_heads = audio_heads
        self.pattern = audio_heads.config["kind"]
        self.num_codebooks = len(code_offsets)
        self.pad_id = pad_id
        self.frame_fraction = frame_fraction
        self.register_buffer("code_offsets", torch.tensor(code_offsets), persistent=False)

    def forward(self, input_ids: torch.Tensor, audio_features=None, **kwargs: Any) -> Any:
        """ContinuousInputLM's forward; in training, plus a zero-valued term from one call of
        the audio heads, so their parameters are part of the forward pass: DDP syncs only
        gradients of parameters the forward reached (the trainer applies the heads after it,
        to the states the loss keeps), and ZeRO-3 gathers a module's weights when it runs."""
        outputs = super().forward(input_ids, audio_features, **kwargs)
        if self.training and torch.is_grad_enabled() and self.num_codebooks > 1:
            width = self.lm.get_input_embeddings().embedding_dim
            probe = outputs.logits.new_zeros((1, width))
            codes = input_ids.new_zeros((1, self.num_codebooks - 1))
            outputs.logits = outputs.logits + self.audio_heads(probe, codes).sum() * 0.0
        return outputs

    def local_codes(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [n, K] vocab ids -> (codes [n, K] codebook-local, 0 at pads; present [n, K])."""
        present = rows != self.pad_id
        codes = (rows - self.code_offsets.to(rows.device)).masked_fill(~present, 0)
        return codes, present

    def audio_loss_sum(self, hidden: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed fp32 cross-entropy of codebooks 1..K-1 -> (sum, number of targets).

        hidden [n, D]: the LLM's final states at the positions before n target steps;
        rows [n, K]: those steps' vocab ids. Delay gaps (pads) are no target; the count is
        what `mmllm.pretrain.schedule.count_targets` counts. `depth` with `frame_fraction`
        < 1 trains the depth transformer on that share of the steps (CSM's compute
        amortisation), drawn from a generator seeded by the rows (a resumed run draws the
        same ones), the sum scaled up to stand for all of them (an unbiased estimate)."""
        if self.num_codebooks == 1 or rows.shape[0] == 0:
            return hidden.sum() * 0.0, 0
        total = int((rows[:, 1:] != self.pad_id).sum())
        if self.pattern == "depth" and self.frame_fraction < 1.0:
            generator = torch.Generator().manual_seed(int(rows.sum()) % (2**31))
            count = max(1, round(rows.shape[0] * self.frame_fraction))
            chosen = torch.randperm(rows.shape[0], generator=generator)[:count].to(rows.device)
            hidden, rows = hidden[chosen], rows[chosen]
        codes, present = self.local_codes(rows)
        targets = codes[:, 1:].masked_fill(~present[:, 1:], IGNORE_INDEX)
        logits = self.audio_heads(hidden, codes[:, :-1])  # [n, K-1, C]
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        chosen_targets = int((targets != IGNORE_INDEX).sum())
        return loss * (total / max(chosen_targets, 1)), total

    def sample_codebooks(
        self, hidden: torch.Tensor, first: torch.Tensor, active: torch.Tensor, pick: Pick
    ) -> torch.Tensor:
        """One step's row in generation: hidden [n, D], codebook 0's vocab ids [n] (a code, or
        the pad where delay's codebook 0 has ended), active [n, K-1] (delay: the streams
        not in a gap) -> vocab ids [n, K] (pads where not active)."""
        rows = first.new_full((first.shape[0], self.num_codebooks), self.pad_id)
        rows[:, 0] = first
        if self.num_codebooks == 1:
            return rows
        offsets = self.code_offsets.to(first.device)
        local = (first - offsets[0]).clamp(0, self.audio_heads.config["codebook_size"] - 1)
        rest = self.audio_heads.sample(hidden, local, pick) + offsets[1:]
        rows[:, 1:] = torch.where(active, rest, rows[:, 1:])
        return rows


def save_audio_heads(
    heads: nn.Module,
    directory: str | Path,
    state_dict: dict | None = None,
    extra: dict | None = None,
) -> None:
    """Write the heads' weights, kind and sizes (and `extra`, e.g. frame_fraction) next to an
    HF checkpoint, each file atomically."""
    state = state_dict if state_dict is not None else heads.state_dict()
    atomic_write_bytes(Path(directory) / AUDIO_HEADS_WEIGHTS, state_dict_bytes(state))
    config = {**heads.config, **(extra or {})}
    atomic_write_text(Path(directory) / AUDIO_HEADS_CONFIG, json.dumps(config, indent=1))


def load_audio_heads(directory: str | Path) -> tuple[nn.Module, dict]:
    """(the DelayHeads or DepthTransformer saved in `directory`, its config)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / AUDIO_HEADS_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory}: no {AUDIO_HEADS_CONFIG} (not a delay/depth checkpoint)"
        )
    config = json.loads(path.read_text())
    sizes = {k: config[k] for k in ("width", "num_codebooks", "codebook_size")}
    depth = {k: config[k] for k in ("hidden_size", "num_layers", "num_heads") if k in config}
    heads = build_audio_heads(config["kind"], **sizes, depth=depth)
    heads.load_state_dict(load_file(directory / AUDIO_HEADS_WEIGHTS))
    return heads, config


def multicodebook_lm(
    lm: nn.Module,
    vocab: MultimodalVocab,
    tokenizer: str,
    pattern: str,
    depth: dict | None = None,
    frame_fraction: float = 1.0,
    heads: nn.Module | None = None,
    codebook_weights: CodebookSum | None = None,
) -> MultiCodebookLM:
    """Wrap `lm` (resized to `vocab`) for `pattern` over `tokenizer`'s codebooks. New heads
    are built unless given (`heads`, `codebook_weights`: loaded from a checkpoint); delay
    heads start from the output layer's rows of their codebook (read whole: build this
    before ZeRO-3 partitions the model)."""
    block = vocab.block(tokenizer)
    num_codebooks, size = block.num_codebooks, block.codebook_size
    offsets = [vocab.audio_range(tokenizer, k)[0] for k in range(num_codebooks)]
    if codebook_weights is None:
        codebook_weights = CodebookSum(num_codebooks, lm.get_input_embeddings(), vocab.pad_audio_id)
    if heads is None:
        width = lm.get_input_embeddings().weight.shape[1]
        init_rows = None
        out = lm.get_output_embeddings()
        if pattern == "delay" and out is not None:
            init_rows = [out.weight[o : o + size].detach() for o in offsets[1:]]
        heads = build_audio_heads(pattern, width, num_codebooks, size, depth, init_rows)
    return MultiCodebookLM(
        lm,
        codebook_weights,
        vocab.audio_embed_id,
        heads,
        offsets,
        vocab.pad_audio_id,
        frame_fraction,
    )


def find_multicodebook(model: Any) -> MultiCodebookLM | None:
    """The MultiCodebookLM under a DeepSpeed or DDP wrapper (`.module`), or None."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, MultiCodebookLM) else None
