"""The continuous-input baseline: audio features enter the LLM as embeddings, not tokens.

Templates render an input audio span as <|audio_start|> <|audio_embed|> x n <|audio_end|>
and hand over the n feature frames [n, D * stack] (`Rendered.features`, packed into
`audio_features` of a batch in the row-major order of the placeholders). `ContinuousInputLM`
embeds the ids as usual, then overwrites the placeholder positions with
`AudioProjector(features)`:

    frames [n, stack * D] -> LayerNorm -> Linear(stack * D, hidden) -> GELU -> Linear(hidden, width)

Everything else (trainer, templates, packing, per-document attention, budget) is the same
as for discrete runs, and outputs that are audio stay discrete tokens. The wrapper forwards
`get_input_embeddings` / `get_output_embeddings` / `config` to the LLM so the trainer's
optimizer groups, LoRA and export treat it like the bare model.

Checkpoint: the LLM in HF format as usual, plus `mmllm_projector.safetensors` and
`mmllm_projector.json` beside it (`save_projector` / `load_projector`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmllm.fileio import atomic_write_bytes, atomic_write_text

PROJECTOR_WEIGHTS = "mmllm_projector.safetensors"
PROJECTOR_CONFIG = "mmllm_projector.json"


class AudioProjector(nn.Module):
    """Stacked feature frames [n, in_dim] -> embeddings [n, out_dim]."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.config = {"in_dim": in_dim, "out_dim": out_dim, "hidden_dim": hidden_dim}
        self.norm = nn.LayerNorm(in_dim)
        self.up = nn.Linear(in_dim, hidden_dim)
        self.down = nn.Linear(hidden_dim, out_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.up(self.norm(frames))))


class ContinuousInputLM(nn.Module):
    """A causal LM whose <|audio_embed|> positions take projected audio features."""

    def __init__(self, lm: nn.Module, projector: AudioProjector, audio_embed_id: int) -> None:
        super().__init__()
        self.lm = lm
        self.projector = projector
        self.audio_embed_id = audio_embed_id

    @property
    def config(self) -> Any:
        return self.lm.config

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        audio_features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """input_ids [B, L]; audio_features [n, in_dim], n = number of <|audio_embed|> ids
        in input_ids; other kwargs (position_ids, document_spans, ...) go to the LLM."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        slots = input_ids == self.audio_embed_id
        count = int(slots.sum())
        if count:
            if audio_features is None or audio_features.shape[0] != count:
                got = None if audio_features is None else audio_features.shape[0]
                raise ValueError(f"{count} <|audio_embed|> positions but {got} feature frames")
            projected = self.projector(audio_features.to(embeds.device, torch.float32))
            embeds = embeds.masked_scatter(slots[..., None], projected.to(embeds.dtype))
        return self.lm(inputs_embeds=embeds, **kwargs)


def save_projector(projector: AudioProjector, directory: str | Path, state_dict=None) -> None:
    """Write the projector's weights and shape next to an HF checkpoint (atomically)."""
    from safetensors.torch import save

    state = state_dict if state_dict is not None else projector.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(Path(directory) / PROJECTOR_WEIGHTS, save(tensors))
    atomic_write_text(Path(directory) / PROJECTOR_CONFIG, json.dumps(projector.config, indent=1))


def load_projector(directory: str | Path) -> AudioProjector:
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / PROJECTOR_CONFIG).is_file():
        raise FileNotFoundError(
            f"{directory}: no {PROJECTOR_CONFIG}; not a continuous-input checkpoint"
        )
    projector = AudioProjector(**json.loads((directory / PROJECTOR_CONFIG).read_text()))
    projector.load_state_dict(load_file(directory / PROJECTOR_WEIGHTS))
    return projector
