"""Shared helpers for the backends built on Hugging Face models (codecs and SSL encoders).

Loading (`load_pretrained`): `weights` is a local directory (`model.save_pretrained(dir)`,
or a downloaded snapshot) or a hub id. A hub id is looked up in the local Hugging Face
cache first (`local_files_only=True`, instant) and only then on the hub, and only when the
hub answers a 2-second connection probe: transformers retries an unreachable hub for
about a minute before failing, which reads as a hang. Offline, the error names the id and
the tokenizers that need no download. Models come back in fp32, eval mode, on the
configured device; a checkpoint that leaves parameters uninitialised is refused (loading
the wrong class from a directory would otherwise give random codes with only a warning).

Exact batching (`pad_to_whole_frames`, `equal_length_groups`, `conv_receptive_field`):
each backend zeroes samples beyond each item's length and pads every item to a whole
number of frames, so an item's codes do not depend on what else is in its batch; how each
backend deals with the padding its model can still see is documented in its module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from mmllm.runtime import resolve_device
from mmllm.tokenizers.base import TokenizerConfig

OFFLINE_TOKENIZERS = ("mfcc-kmeans", "mel-rvq")
HUB_PROBE_TIMEOUT_S = 2.0
# Parameters some SSL checkpoints omit because only pretraining uses them (time masking).
_MISSING_OK = ("masked_spec_embed",)
# Fields every backend may set; the others (`weights` too: the offline feature backends have
# none) must stay at their defaults unless the backend names them as used.
_ALWAYS_ALLOWED = {"name", "device", "trust_remote_code", "options"}


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights that are neither a local directory, cached, nor downloadable now."""


# ----------------------------------------------------------------------------- config checks


def check_fields(cfg: TokenizerConfig, used: set[str]) -> None:
    """Refuse config fields this backend ignores: a set-but-ignored field is a silent bug."""
    for field in dataclasses.fields(TokenizerConfig):
        if field.name in _ALWAYS_ALLOWED or field.name in used:
            continue
        default = (
            field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else field.default
        )
        value = getattr(cfg, field.name)
        if value != default:
            raise ValueError(
                f"tokenizer {cfg.name!r} does not use `{field.name}` (got {value!r}); leave it unset"
            )


def check_options(cfg: TokenizerConfig, allowed: set[str]) -> None:
    """Refuse unknown keys in `cfg.options`, naming the ones this backend knows."""
    unknown = sorted(set(cfg.options) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"tokenizer {cfg.name!r}: unknown options {unknown} (known: {known})")


# ----------------------------------------------------------------------------- loading


def _offline_env() -> bool:
    flags = (os.environ.get(var, "") for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag.strip().lower() in ("1", "true", "yes", "on") for flag in flags)


@lru_cache(maxsize=4)
def _probe(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be asked for files now (offline flags respected).

    A TCP connection probe (2 s) to `HF_ENDPOINT`; behind a proxy the probe cannot tell,
    so the hub client is left to try. The answer is cached for the process.
    """
    if _offline_env():
        return False
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    return _probe(url.hostname or "huggingface.co", port)


def looks_like_path(weights: str) -> bool:
    return weights.startswith(("/", ".", "~")) or weights.count("/") > 1 or "\\" in weights


def offline_message(tokenizer: str, weights: str) -> str:
    return (
        f"tokenizer {tokenizer!r}: no weights reachable for {weights!r}: it is not a local "
        f"directory, not in the Hugging Face cache, and the hub cannot be reached (offline). "
        f"Download it where the hub is reachable (`huggingface-cli download {weights} "
        f"--local-dir DIR`) and set `weights: DIR`, or use a tokenizer that needs no "
        f"download: {', '.join(OFFLINE_TOKENIZERS)}"
    )


def require_weights(cfg: TokenizerConfig, example: str) -> str:
    if not cfg.weights:
        raise ValueError(
            f"tokenizer {cfg.name!r}: `weights` is required: a hub id (e.g. {example}) "
            f"or a local directory written by save_pretrained"
        )
    return cfg.weights


def load_pretrained(model_cls: type, cfg: TokenizerConfig, example: str) -> nn.Module:
    """`model_cls.from_pretrained(cfg.weights)` that never hangs offline -> fp32 eval model on cfg.device.

    `example` is a hub id named in the error when `weights` is missing.
    """
    weights = require_weights(cfg, example)
    kwargs: dict[str, Any] = {
        "dtype": torch.float32,
        "trust_remote_code": cfg.trust_remote_code,
        "output_loading_info": True,
    }
    path = Path(weights).expanduser()
    if path.is_dir():
        model, info = model_cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    elif looks_like_path(weights):
        raise FileNotFoundError(
            f"tokenizer {cfg.name!r}: weights directory {weights!r} does not exist"
        )
    else:
        try:  # the local Hugging Face cache: instant, no network
            model, info = model_cls.from_pretrained(weights, local_files_only=True, **kwargs)
        except OSError:
            if not hub_reachable():
                raise WeightsUnavailableError(offline_message(cfg.name, weights)) from None
            model, info = model_cls.from_pretrained(weights, **kwargs)
    missing = [key for key in info.get("missing_keys", ()) if not key.endswith(_MISSING_OK)]
    if missing:
        shown = ", ".join(sorted(missing)[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(
            f"tokenizer {cfg.name!r}: {weights!r} is not a {model_cls.__name__} checkpoint "
            f"(saved model_type {getattr(model.config, 'model_type', '?')!r}); "
            f"{len(missing)} parameters missing: {shown}"
        )
    return model.to(device=resolve_device(cfg.device), dtype=torch.float32).eval()


def read_json_file(cfg: TokenizerConfig, filename: str) -> dict[str, Any] | None:
    """A JSON file stored beside the weights (e.g. preprocessor_config.json), or None.

    Local directory, then the Hugging Face cache, then the hub when reachable.
    """
    if not cfg.weights:
        return None
    path = Path(cfg.weights).expanduser()
    if path.is_dir():
        return json.loads((path / filename).read_text()) if (path / filename).is_file() else None
    if looks_like_path(cfg.weights):
        return None
    from huggingface_hub import hf_hub_download

    for local_only in (True, False):
        if not local_only and not hub_reachable():
            return None
        try:
            file = hf_hub_download(cfg.weights, filename, local_files_only=local_only)
        except Exception:  # missing file, missing repo, no cache entry: all mean "not there"
            continue
        return json.loads(Path(file).read_text())
    return None


# ----------------------------------------------------------------------------- exact batching


def check_batch(wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Validate encode() inputs -> lengths as int64 on wav's device."""
    if wav.dim() != 2:
        raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
    lengths = torch.as_tensor(lengths, device=wav.device).long()
    if lengths.shape != (wav.shape[0],):
        raise ValueError(f"lengths must be [B={wav.shape[0]}], got shape {tuple(lengths.shape)}")
    if len(lengths) and (lengths.min() < 0 or lengths.max() > wav.shape[1]):
        raise ValueError(f"lengths must lie in [0, {wav.shape[1]}], got {lengths.tolist()}")
    return lengths


def sample_mask(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """[B] lengths -> bool [B, total], True on each item's own samples."""
    return torch.arange(total, device=lengths.device)[None, :] < lengths[:, None]


def pad_to_whole_frames(
    wav: torch.Tensor, lengths: torch.Tensor, hop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero every sample at or beyond each item's length and pad the batch to whole frames.

    wav [B, T], lengths [B] -> (wav [B, F_max * hop], frame_lengths [B] = ceil(lengths / hop)).
    Encoding an item alone runs on exactly its own samples followed by zeros up to its last
    frame's end, the same values it has inside any batch.
    """
    frame_lengths = (lengths + hop - 1) // hop
    total = int(frame_lengths.max()) * hop if len(lengths) else 0
    out = wav.new_zeros(wav.shape[0], total)
    width = min(total, wav.shape[1])
    out[:, :width] = wav[:, :width] * sample_mask(lengths, width)
    return out, frame_lengths


def equal_length_groups(lengths: torch.Tensor) -> list[torch.Tensor]:
    """Indices of the items of each distinct length (longest first): groups that need no padding."""
    values = torch.unique(lengths.cpu())
    return [torch.nonzero(lengths.cpu() == value).flatten() for value in values.flip(0).tolist()]


def conv_receptive_field(convs: list[nn.Conv1d]) -> tuple[int, int]:
    """Input samples that output frame 0 of a conv stack reads: (first, last), inclusive.

    `convs` in forward order. Output frame j reads [j * hop + first, j * hop + last] with
    hop = the product of the strides. Residual branches can be listed in sequence: their
    identity path reads a subset of what the branch reads.
    """
    first, last = 0, 0
    for conv in reversed(convs):
        (kernel,), (stride,), (dilation,) = conv.kernel_size, conv.stride, conv.dilation
        if conv.padding == "same":  # torch pads (total // 2) on the left
            pad = dilation * (kernel - 1) // 2
        else:  # "valid" or a tuple
            pad = 0 if isinstance(conv.padding, str) else conv.padding[0]
        first = first * stride - pad
        last = last * stride - pad + dilation * (kernel - 1)
    return first, last


def as_normal_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Results computed under torch.inference_mode, as ordinary tensors (in-place ops allowed)."""
    return (
        tensor.clone()
        if tensor.is_inference() and not torch.is_inference_mode_enabled()
        else tensor
    )
