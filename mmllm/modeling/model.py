"""The model side of the multimodal vocabulary: a causal LM sized and initialised for a
`MultimodalVocab`, and self-describing checkpoints.

    resize_model(model, vocab, init="mean" | "random" | "centroids", freeze_new=False)
    freeze_audio_rows(model, vocab)     # gradient hooks keep the audio rows fixed
    save_pretrained_multimodal(model, hf_tokenizer, vocab, checkpoint_dir)
    model, hf_tokenizer, vocab = load_pretrained_multimodal(checkpoint_dir)

`resize_model` resizes a causal LM's embeddings and output layer to `vocab.size` and
initialises the new (special and audio) rows; `save_pretrained_multimodal` /
`load_pretrained_multimodal` write and read a checkpoint holding the model, the extended
tokenizer and `mmllm_vocab.json`. The id layout itself is `mmllm.data.vocab`'s. Later steps add
building the LLM, LoRA and the task heads here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mmllm.data.vocab import MultimodalVocab, _check_hf_ids
from mmllm.fileio import atomic_directory, verify_manifest, write_manifest

INIT_MODES = ("mean", "random", "centroids")


def resize_model(
    model: Any,
    vocab: MultimodalVocab,
    init: str = "mean",
    centroids: Mapping[Any, torch.Tensor] | None = None,
    freeze_new: bool = False,
    seed: int = 0,
    audio_input_rms: float | None = None,
) -> Any:
    """Resize a causal LM's input embeddings and output layer to `vocab.size` and initialise
    every row at or beyond `vocab.text_size` (special and audio tokens). In place; returns it.

    init:
      mean       every new row is the mean of the text rows
      random     normal(mean, std) of the text rows' entries (seeded by `seed`)
      centroids  audio rows of each (tokenizer, codebook) from its k-means centroids
                 [codebook_size, D_c]: centred, mapped to the model width by a fixed random
                 projection (seeded by `seed` and the block), each row scaled to the text
                 rows' mean norm; special rows get the mean. `centroids` maps
                 (tokenizer, codebook) -> [codebook_size, D_c], or tokenizer -> [K, codebook_size, D_c];
                 every audio block needs one.
    Statistics come from rows [0, text_size) of each matrix (input embeddings and, when
    untied, the output layer, each with its own). Tied embeddings stay tied.

    audio_input_rms: the audio rows of the input embeddings (not the special rows, not the
      output layer) are drawn from N(0, audio_input_rms^2) instead (seeded by `seed`), after
      `init` (not with centroids, which it would overwrite). Why: a from-scratch Llama's rows
      are at rms 0.02 (their mean, the `mean` init, at 0.0006); at unit scale an audio
      position keeps its identity through the residual stream (docs/experiments.md,
      2026-12-03, acd1103). Needs untied embeddings.

    freeze_new: the audio rows (not the special ones) keep their initial values during
      training: a gradient hook zeros their gradient rows (`freeze_audio_rows`). Hooks are
      not saved with the model; re-apply after loading. Decoupled weight decay (AdamW) still
      shrinks rows with zero gradient: put the embeddings in a weight_decay=0 group.
    """
    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
    if init == "centroids" and centroids is None:
        raise ValueError("init='centroids' needs centroids")
    if audio_input_rms is not None and (init == "centroids" or audio_input_rms <= 0):
        raise ValueError(
            f"audio_input_rms must be > 0 and not combined with init='centroids', got "
            f"{audio_input_rms} with init={init!r}"
        )
    old_rows = model.get_input_embeddings().weight.shape[0]
    if old_rows < vocab.text_size:
        raise ValueError(
            f"model has {old_rows} embedding rows, fewer than the vocab's text_size {vocab.text_size}"
        )
    tied_before = _is_tied(model)
    model.resize_token_embeddings(vocab.size, mean_resizing=False)
    if tied_before and not _is_tied(model):
        raise RuntimeError("resizing untied the model's input and output embeddings")

    directions = None
    if init == "centroids":
        directions = _centroid_directions(
            vocab, centroids, model.get_input_embeddings().weight.shape[1], seed
        )
    generator = torch.Generator().manual_seed(seed)
    matrices = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and not _is_tied(model):
        matrices.append(out.weight)
    with torch.no_grad():
        for weight in matrices:
            _init_new_rows(weight, vocab, init, directions, generator)
        bias = getattr(out, "bias", None) if out is not None else None
        if bias is not None and bias.shape[0] == vocab.size:
            bias[vocab.text_size :] = bias[: vocab.text_size].float().mean().to(bias.dtype)
        if audio_input_rms is not None:
            if _is_tied(model):
                raise ValueError("audio_input_rms needs untied input and output embeddings")
            weight = model.get_input_embeddings().weight
            rows = torch.randn(
                vocab.size - vocab.audio_start,
                weight.shape[1],
                generator=torch.Generator().manual_seed(seed),
            )
            weight[vocab.audio_start :] = (rows * audio_input_rms).to(weight.device, weight.dtype)
    if freeze_new:
        freeze_audio_rows(model, vocab)
    return model


def _is_tied(model: Any) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def _init_new_rows(
    weight: torch.Tensor,
    vocab: MultimodalVocab,
    init: str,
    directions: dict[tuple[str, int], torch.Tensor] | None,
    generator: torch.Generator,
) -> None:
    ref = weight[: vocab.text_size].detach().float()
    new = weight.shape[0] - vocab.text_size
    mean_row = ref.mean(dim=0)
    if init == "mean":
        rows = mean_row.expand(new, -1)
    elif init == "random":
        rows = torch.randn(new, ref.shape[1], generator=generator) * ref.std() + ref.mean()
    else:
        assert directions is not None
        norm = ref.norm(dim=1).mean()
        rows = mean_row.expand(new, -1).clone()
        for (name, k), unit in directions.items():
            start, stop = vocab.audio_range(name, k)
            rows[start - vocab.text_size : stop - vocab.text_size] = unit * norm
    weight[vocab.text_size :] = rows.to(device=weight.device, dtype=weight.dtype)


def _centroid_directions(
    vocab: MultimodalVocab, centroids: Mapping[Any, torch.Tensor], width: int, seed: int
) -> dict[tuple[str, int], torch.Tensor]:
    """Unit-norm rows [codebook_size, width] per (tokenizer, codebook): centred centroids
    through a fixed Gaussian projection seeded by (seed, block index)."""
    directions = {}
    index = 0
    for block in vocab.blocks.values():
        for k in range(block.num_codebooks):
            if (block.tokenizer, k) in centroids:
                table = torch.as_tensor(centroids[(block.tokenizer, k)])
            elif block.tokenizer in centroids:
                table = torch.as_tensor(centroids[block.tokenizer])
                if table.dim() != 3 or table.shape[0] != block.num_codebooks:
                    raise ValueError(
                        f"centroids of {block.tokenizer!r}: expected [K={block.num_codebooks}, "
                        f"{block.codebook_size}, D], got {list(table.shape)}"
                    )
                table = table[k]
            else:
                raise ValueError(
                    f"no centroids for audio tokenizer {block.tokenizer!r} codebook {k}"
                )
            table = table.detach().float().cpu()
            if table.dim() != 2 or table.shape[0] != block.codebook_size:
                raise ValueError(
                    f"centroids of {block.tokenizer!r} codebook {k}: expected "
                    f"[{block.codebook_size}, D], got {list(table.shape)}"
                )
            g = torch.Generator().manual_seed(seed * 100_003 + index)
            projection = torch.randn(table.shape[1], width, generator=g) / table.shape[1] ** 0.5
            rows = (table - table.mean(dim=0)) @ projection
            directions[(block.tokenizer, k)] = rows / rows.norm(dim=1, keepdim=True).clamp_min(
                1e-12
            )
            index += 1
    return directions


def freeze_audio_rows(model: Any, vocab: MultimodalVocab) -> list[Any]:
    """Zero the gradient of the audio rows [audio_start, size) of the input embeddings and
    (untied) output layer with tensor hooks, so that optimizers without weight decay leave
    them unchanged. Returns the hook handles (also kept in `model._mmllm_freeze_handles`);
    `handle.remove()` unfreezes."""
    start, stop = vocab.audio_start, vocab.size

    def zero_rows(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[start:stop] = 0
        return grad

    params = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and not _is_tied(model):
        params.append(out.weight)
        if getattr(out, "bias", None) is not None:
            params.append(out.bias)
    for param in params:
        if param.shape[0] != vocab.size:
            raise ValueError(f"model has {param.shape[0]} rows, vocab {vocab.size}: resize first")
    handles = [param.register_hook(zero_rows) for param in params]
    model._mmllm_freeze_handles = [*getattr(model, "_mmllm_freeze_handles", []), *handles]
    return handles


def save_pretrained_multimodal(
    model: Any,
    hf_tokenizer: Any,
    vocab: MultimodalVocab,
    directory: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write model (safetensors), tokenizer and `mmllm_vocab.json` into `directory`,
    atomically (the whole directory appears at once). `state_dict` replaces the model's own
    tensors (DeepSpeed ZeRO-3 keeps only a shard of each in the module); `extra(tmp_dir)` writes
    further files into the directory before it appears (projector, run config)."""
    weight = model.get_input_embeddings().weight
    rows = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3 records the full shape
    if rows != vocab.size or len(hf_tokenizer) != vocab.size:
        raise ValueError(
            f"model rows {rows} / tokenizer size {len(hf_tokenizer)} / vocab size {vocab.size} "
            "differ: extend_hf_tokenizer and resize_model first"
        )
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        hf_tokenizer.save_pretrained(tmp)
        vocab.save(tmp)
        if extra is not None:
            extra(Path(tmp))
        write_manifest(tmp)
    return Path(directory)


def load_pretrained_multimodal(
    directory: str | Path, trust_remote_code: bool = False, verify: bool = True, **model_kwargs: Any
) -> tuple[Any, Any, MultimodalVocab]:
    """(model, tokenizer, vocab) from a `save_pretrained_multimodal` directory, its files
    checked against their SHA-256 manifest (IntegrityError names one that differs), checked
    to agree in size."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if verify:
        verify_manifest(directory)
    vocab = MultimodalVocab.load(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        directory, trust_remote_code=trust_remote_code, **model_kwargs
    )
    rows = model.get_input_embeddings().weight.shape[0]
    if rows != vocab.size or len(tokenizer) != vocab.size:
        raise ValueError(
            f"{directory}: model rows {rows} / tokenizer size {len(tokenizer)} / vocab size "
            f"{vocab.size} differ"
        )
    _check_hf_ids(tokenizer, vocab, vocab.added_tokens())
    return model, tokenizer, vocab
