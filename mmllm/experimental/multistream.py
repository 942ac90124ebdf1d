"""The multi-stream model for the `delay` codebook pattern (MusicGen-style).

With `delay`, a sequence has K parallel streams instead of one: every step (model position)
holds K ids, `stream_ids: [B, T, K]`. A text or special position holds its id in stream 0 and
`<|pad_audio|>` in streams 1..K-1; an audio step holds in stream k the vocab id of codebook
k's code at that (delayed) step, or `<|pad_audio|>` where the delay layout has a gap.

Worked example, K = 2, prompt `t0 t1 <|audio_start|>`, codes [[a0, a1, a2], [b0, b1, b2]],
then `<|audio_end|>` (`build_stream_sequence`; `-` is `<|pad_audio|>` in stream_ids and
-100 (ignored) in labels):

    row  stream 0        stream 1   labels (stream 0, stream 1)
    0    t0              -          t0, -      text: stream 0 only
    1    t1              -          t1, -
    2    <|audio_start|> -          <|audio_start|>, -
    3    a0              -          a0, -      delay build: codebook 1 starts one step late
    4    a1              b0         a1, b0
    5    a2              b1         a2, b1
    6    -               b2         <|pad_audio|>, b2   codebook 0 has ended: its stop signal
    7    <|audio_end|>   -          <|audio_end|>, -

Labels are not shifted (like Hugging Face's): `MultiStreamLM.forward` predicts row t + 1 of
every stream from rows <= t, with head k for stream k. So b0 (row 4) is predicted having
seen a0 (row 3): each codebook conditions on the coarser codebooks of the same frame.

The model (`MultiStreamLM`) wraps any Hugging Face causal LM already resized to the vocab:

    input   embedding(row) = sum_k softmax(w)_k E(stream_ids[..., k]), the softmax taken over
            the streams that are not pad, w: [K] learned (init zeros = the mean), E the LM's
            own input embedding table. A text row has one non-pad stream, so its embedding
            is exactly E(id): text positions see the base LM unchanged.
    output  K heads over the whole vocab; head 0 is the LM's own output layer (text is
            predicted as before), heads 1..K-1 are new Linear layers initialised from it.

Generation is not here. A generator must, at audio steps: sample head k within codebook k's
ids (head 0: or `<|pad_audio|>`), force `<|pad_audio|>` where the layout has gaps (stream k
during the span's first k steps), stop codebook 0 when head 0 picks `<|pad_audio|>`, finish
the other streams in K - 1 steps and then write `<|audio_end|>` in stream 0.

    model = MultiStreamLM(resize_model(lm, vocab), vocab, "encodec")
    stream_ids, labels = build_stream_sequence(vocab, "encodec", [prompt_ids, codes, [end]])
    out = model(stream_ids[None], labels=labels[None])    # out.logits [1, T, K, V], out.loss
    save_multistream(model, checkpoint_dir)               # next to the HF checkpoint files
    model = load_multistream(checkpoint_dir, lm, vocab)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from mmllm.data.patterns import get_pattern
from mmllm.data.vocab import MultimodalVocab
from mmllm.fileio import atomic_write_bytes, atomic_write_text, state_dict_bytes

IGNORE_INDEX = -100


MULTISTREAM_WEIGHTS = "mmllm_multistream.safetensors"


MULTISTREAM_CONFIG = "mmllm_multistream.json"


MULTISTREAM_FORMAT = "mmllm_multistream"


MULTISTREAM_VERSION = 1


Segment = Sequence[int] | torch.Tensor | np.ndarray  # text/special ids, or codes [K, F]


def audio_stream_rows(vocab: MultimodalVocab, tokenizer: str, codes: Any) -> torch.Tensor:
    """Codes `[K, F]` of `tokenizer` -> stream rows `[F + K - 1, K]` of vocab ids.

    The `delay` pattern's span (`mmllm.data.patterns`, `[K, F + K - 1]`, gaps = `<|pad_audio|>`)
    transposed, so row s is model step s. `PAD_CODE` frames become `<|pad_audio|>` too."""
    ids = vocab.audio_ids(tokenizer, codes)  # [K, F]; checks K and the code ranges
    span = get_pattern("delay").build(ids, fill=vocab.pad_audio_id)
    return span.t().contiguous()


def codes_from_stream_rows(
    vocab: MultimodalVocab, tokenizer: str, rows: torch.Tensor
) -> torch.Tensor:
    """Inverse of `audio_stream_rows`: rows `[F + K - 1, K]` -> codes `[K, F]` (int64)."""
    num_codebooks = vocab.block(tokenizer).num_codebooks
    span = get_pattern("delay").revert(rows.t(), num_codebooks=num_codebooks)
    return vocab.codes_from_ids(tokenizer, span)


def build_stream_sequence(
    vocab: MultimodalVocab,
    tokenizer: str,
    segments: Sequence[Segment],
    targets: Sequence[bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segments in order -> (stream_ids `[T, K]`, labels `[T, K]`), both int64.

    segments: lists of text/special ids (one row each, stream 0), or audio codes `[K, F]` of
      `tokenizer` (`audio_stream_rows`). Markers such as `<|audio_start|>` are the caller's,
      as plain id segments, so the layout is exactly what is written.
    targets: per segment, whether it is a loss target (default: all are). Labels are the
      stream ids of target segments, -100 elsewhere and at every `<|pad_audio|>` except the
      one in stream 0 right after codebook 0's last code: that pad says "codebook 0 has
      ended", the only signal a generator gets to stop the audio (the other pads follow from
      the layout and the generator forces them). Labels are unshifted (see `forward`).
    """
    num_codebooks = vocab.block(tokenizer).num_codebooks
    targets = [True] * len(segments) if targets is None else list(targets)
    if len(targets) != len(segments):
        raise ValueError(f"{len(segments)} segments but {len(targets)} target flags")
    pad = vocab.pad_audio_id
    stream_parts, label_parts = [], []
    for segment, is_target in zip(segments, targets, strict=True):
        if isinstance(segment, torch.Tensor | np.ndarray) and segment.ndim == 2:
            rows = audio_stream_rows(vocab, tokenizer, segment)
            labels = torch.where(rows == pad, IGNORE_INDEX, rows)
            if num_codebooks > 1:  # the stop signal (for K = 1 the span just ends)
                labels[segment.shape[1], 0] = pad
        else:
            ids = torch.as_tensor(segment, dtype=torch.int64)
            if ids.dim() != 1:
                raise ValueError(
                    f"a segment is either ids [N] or codes [K, F], got shape {tuple(ids.shape)}"
                )
            rows = torch.full((ids.shape[0], num_codebooks), pad, dtype=torch.int64)
            rows[:, 0] = ids
            labels = torch.full_like(rows, IGNORE_INDEX)
            labels[:, 0] = ids
        if not is_target:
            labels = torch.full_like(rows, IGNORE_INDEX)
        stream_parts.append(rows)
        label_parts.append(labels)
    if not stream_parts:
        empty = torch.zeros((0, num_codebooks), dtype=torch.int64)
        return empty, empty.clone()
    return torch.cat(stream_parts), torch.cat(label_parts)


@dataclass
class MultiStreamOutput:
    logits: torch.Tensor  # [B, T, K, V]
    loss: torch.Tensor | None = None  # scalar, when labels were given


class MultiStreamLM(nn.Module):
    """A Hugging Face causal LM reading and writing K parallel token streams (`delay`).

    base_model: any `*ForCausalLM` already resized to `vocab.size` (`mmllm.modeling.model.resize_model`),
      kept as `self.lm` (its parameters are this module's, for optimizers and DeepSpeed).
    tokenizer_name: the audio tokenizer whose K codebooks are the K streams.

    Parameters added: `stream_logits` [K] (w; softmax(w) mixes the K input embeddings, init
    zeros = plain mean) and `extra_heads` (K - 1 Linear hidden -> V). The extra heads start
    as copies of the base output layer, not random: that layer's rows for the audio ids carry
    `resize_model`'s initialisation (mean / centroids) and the LM's calibrated logit scale,
    so every head starts from the same sensible distribution and only has to specialise to
    its codebook; random rows would start the new heads at a different logit scale from
    head 0 and from the embeddings. Copies, not shared weights, so the heads can diverge.
    Heads predict over the whole vocab so ids need no remapping; the cost is K - 1 extra
    [V, hidden] matrices (a generator restricts head k to codebook k's block).

    Build it before DeepSpeed / ZeRO-3 partitions the LM: it copies the output layer.
    """

    def __init__(self, base_model: nn.Module, vocab: MultimodalVocab, tokenizer_name: str):
        super().__init__()
        self.lm = base_model
        self.vocab = vocab
        self.tokenizer_name = tokenizer_name
        self.num_streams = vocab.block(tokenizer_name).num_codebooks
        self.pad_id = vocab.pad_audio_id
        config = getattr(base_model, "config", None)
        # Logits post-processed inside the CausalLM's forward would be skipped here (we call
        # the decoder and the output layer directly), so refuse rather than silently differ.
        if getattr(config, "final_logit_softcapping", None) is not None or getattr(
            config, "logit_scale", None
        ) not in (None, 1, 1.0):
            raise ValueError(
                "MultiStreamLM does not support LMs that scale or soft-cap their logits"
            )
        table = base_model.get_input_embeddings()
        out = base_model.get_output_embeddings()
        if out is None or getattr(out, "weight", None) is None:
            raise ValueError("the base model needs an output layer (get_output_embeddings)")
        weight, bias = out.weight, getattr(out, "bias", None)  # [V, D], [V] or None
        for name, rows in (
            ("input embeddings", table.weight.shape[0]),
            ("output", weight.shape[0]),
        ):
            if rows != vocab.size:
                raise ValueError(
                    f"base model {name} have {rows} rows but the vocab has {vocab.size}: "
                    "run mmllm.modeling.model.resize_model first"
                )
        self.stream_logits = nn.Parameter(torch.zeros(self.num_streams, device=weight.device))
        self.extra_heads = nn.ModuleList()
        for _ in range(self.num_streams - 1):
            head = nn.Linear(
                weight.shape[1],
                weight.shape[0],
                bias=bias is not None,
                device=weight.device,
                dtype=weight.dtype,
            )
            with torch.no_grad():
                head.weight.copy_(weight)
                if bias is not None:
                    head.bias.copy_(bias)
            self.extra_heads.append(head)

    # -- pieces

    def stream_weights(self) -> torch.Tensor:
        """softmax(w): [K], the mixing weights of an audio step with all K streams present."""
        return self.stream_logits.float().softmax(-1)

    def heads(self) -> list[nn.Module]:
        """The K output layers, head k for stream k; head 0 is the base LM's own."""
        return [self.lm.get_output_embeddings(), *self.extra_heads]

    def embed(self, stream_ids: torch.Tensor) -> torch.Tensor:
        """stream_ids [B, T, K] -> inputs_embeds [B, T, D]."""
        if stream_ids.dim() != 3 or stream_ids.shape[-1] != self.num_streams:
            raise ValueError(
                f"stream_ids must be [B, T, K={self.num_streams}] "
                f"({self.tokenizer_name!r} codebooks), got shape {tuple(stream_ids.shape)}"
            )
        active = stream_ids != self.pad_id  # [B, T, K]
        # A row of pads only (padding, an empty span) embeds as <|pad_audio|>, like text.
        active[..., 0] |= ~active.any(-1)
        # Softmax over the active streams = softmax(w) renormalised over them; for one active
        # stream it is exactly 1.0 (exp(0) / exp(0)), so text rows embed as E(id) bit for bit.
        weights = self.stream_logits.float().masked_fill(~active, float("-inf")).softmax(-1)
        embeds = self.lm.get_input_embeddings()(stream_ids)  # [B, T, K, D]
        # Elementwise product and sum, not einsum/matmul: a matmul may run in TF32 or reorder
        # and would break the exact text-row identity on GPUs.
        return (weights.to(embeds.dtype).unsqueeze(-1) * embeds).sum(-2)

    # -- forward

    def forward(
        self,
        stream_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> MultiStreamOutput:
        """stream_ids [B, T, K] -> logits [B, T, K, V] (head k at row t predicts stream k at
        row t + 1), and the loss when labels [B, T, K] (unshifted, -100 ignored) are given:
        the mean cross-entropy over every non-ignored (row, stream) target.

        attention_mask ([B, T] padding mask, or an additive [B, 1, T, T] mask such as
        `mmllm.data.packing.block_attention_mask`) and position_ids [B, T] go to the LM as is.
        """
        inputs_embeds = self.embed(stream_ids)
        hidden = (
            self.lm.get_decoder()(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state  # [B, T, D], after the final norm
        )
        logits = torch.stack([head(hidden) for head in self.heads()], dim=2)  # [B, T, K, V]
        loss = None
        if labels is not None:
            if labels.shape != stream_ids.shape:
                raise ValueError(
                    f"labels must have the shape of stream_ids {tuple(stream_ids.shape)}, "
                    f"got {tuple(labels.shape)}"
                )
            loss = multistream_loss(logits, labels)
        return MultiStreamOutput(logits=logits, loss=loss)


def multistream_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, T, K, V], unshifted labels [B, T, K] -> mean cross-entropy (fp32) over the
    non-ignored targets of rows 1..T-1, each predicted from the row before. 0 (with a graph)
    when nothing is a target, rather than NaN, so an all-prompt batch cannot poison a step."""
    predicted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    wanted = labels[:, 1:].reshape(-1).to(logits.device)
    total = F.cross_entropy(predicted, wanted, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (wanted != IGNORE_INDEX).sum().clamp_min(1)


def _extra_state(model: MultiStreamLM) -> dict[str, torch.Tensor]:
    """The parameters the wrapper adds (everything not under `lm.`)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("lm.")}


def save_multistream(model: MultiStreamLM, directory: str | Path) -> Path:
    """Write the wrapper's own parameters (stream_logits, extra heads) as
    `mmllm_multistream.safetensors` + `mmllm_multistream.json` into `directory`, next to the
    base LM's files (`save_pretrained_multimodal` writes those). Each file is atomic.
    Under ZeRO-3, gather the parameters first (the state dict must hold full tensors)."""
    directory = Path(directory)
    atomic_write_bytes(directory / MULTISTREAM_WEIGHTS, state_dict_bytes(_extra_state(model)))
    meta = {
        "format": MULTISTREAM_FORMAT,
        "version": MULTISTREAM_VERSION,
        "pattern": "delay",
        "tokenizer": model.tokenizer_name,
        "num_streams": model.num_streams,
        "vocab": model.vocab.to_dict(),
    }
    atomic_write_text(directory / MULTISTREAM_CONFIG, json.dumps(meta, indent=2) + "\n")
    return directory


def load_multistream(
    directory: str | Path, base_model: nn.Module, vocab: MultimodalVocab
) -> MultiStreamLM:
    """Wrap `base_model` (loaded from the same checkpoint) and restore the saved parameters.
    Refuses files of another format or saved with a different vocab."""
    directory = Path(directory)
    config_path = directory / MULTISTREAM_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory}: no {MULTISTREAM_CONFIG} (not a multistream model)")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != MULTISTREAM_FORMAT or meta.get("version") != MULTISTREAM_VERSION:
        raise ValueError(
            f"{config_path}: not an {MULTISTREAM_FORMAT} v{MULTISTREAM_VERSION} file "
            f"(format={meta.get('format')!r}, version={meta.get('version')!r})"
        )
    if meta.get("vocab") != vocab.to_dict():
        raise ValueError(f"{config_path}: saved with a different vocab than {vocab!r}")
    model = MultiStreamLM(base_model, vocab, meta["tokenizer"])
    state = load_file(str(directory / MULTISTREAM_WEIGHTS))
    expected = _extra_state(model)
    if set(state) != set(expected):
        raise ValueError(
            f"{directory / MULTISTREAM_WEIGHTS}: tensors {sorted(state)} do not match the "
            f"model's {sorted(expected)}"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{directory / MULTISTREAM_WEIGHTS}: {name} has shape {tuple(tensor.shape)}, "
                f"the model {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=False)  # `lm.*` keys are the base model's, untouched
    return model
