"""A tokenizer config that travels with a checkpoint: its fitted files (k-means centroids,
a token vocoder) copied into the checkpoint and named relative to it, so the checkpoint
prompts the same from any working directory or machine.

    checkpoint/tokenizers/input.yaml        the resolved config, `centroids: input-centroids`
    checkpoint/tokenizers/input-centroids/  centroids.safetensors + card.json
    checkpoint/tokenizers/output.yaml ...   the same for the output tokenizer

Pretrained `weights` (a hub id or a local model directory) are not copied: they are large,
and a hub id already resolves anywhere.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from mmllm.config import load_config, save_config
from mmllm.tokenizers.base import TokenizerConfig

PACKAGED_DIR = "tokenizers"
COPIED_FIELDS = ("centroids", "vocoder")  # local directories of fitted files


def package_tokenizer(cfg: TokenizerConfig, checkpoint: Path, role: str) -> None:
    """Copy `cfg`'s fitted directories into `checkpoint`/tokenizers and write `role`.yaml
    naming them relative to that folder (`role`: input or output)."""
    folder = Path(checkpoint) / PACKAGED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    relative = {}
    for name in COPIED_FIELDS:
        source = getattr(cfg, name)
        if source and Path(source).is_dir():
            target = f"{role}-{name}"
            shutil.copytree(source, folder / target, dirs_exist_ok=True)
            relative[name] = target
    save_config(dataclasses.replace(cfg, **relative), folder, f"{role}.yaml")


def load_packaged_tokenizer(checkpoint: Path, role: str) -> TokenizerConfig | None:
    """The `role` tokenizer config packaged in `checkpoint`, its copied directories resolved
    against the checkpoint; None for a checkpoint exported without one."""
    folder = Path(checkpoint) / PACKAGED_DIR
    path = folder / f"{role}.yaml"
    if not path.is_file():
        return None
    cfg = load_config(TokenizerConfig, path)
    resolved = {
        name: str(folder / getattr(cfg, name))
        for name in COPIED_FIELDS
        if getattr(cfg, name) and (folder / getattr(cfg, name)).is_dir()
    }
    return dataclasses.replace(cfg, **resolved)
