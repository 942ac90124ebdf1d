"""Launch settings: the DeepSpeed config filled from the pretrain config, which one the
launcher asked for, and the one-process environment DeepSpeed needs under a bare
`accelerate launch`.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mmllm.pretrain.config import (
    TrainSection,
)


def deepspeed_config(path: str | Path, train: TrainSection, grad_clip: float, bf16: bool) -> dict:
    """Read a DeepSpeed JSON config and fill its "auto" values from the pretrain config;
    a value set in the file that disagrees with the pretrain config is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DeepSpeed config not found (train.deepspeed)")
    ds = json.loads(path.read_text())
    wanted = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": grad_clip,
    }
    for key, value in wanted.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ValueError(
                f'{path}: {key} is {ds[key]} but the pretrain config gives {value}; set it to "auto"'
            )
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above
    ds["bf16"] = {"enabled": bf16}
    ds["fp16"] = {"enabled": False}
    ds.setdefault("steps_per_print", 10**9)  # the loop logs; DeepSpeed's own prints are noise
    return ds


def deepspeed_config_path(train: TrainSection) -> str | None:
    """The DeepSpeed config to use: the launcher's (`accelerate launch --use_deepspeed ...` or
    an accelerate config file with DeepSpeed) wins over `train.deepspeed`."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
            return os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"]
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        return f"configs/deepspeed/zero{stage}.json"
    return train.deepspeed


def prepare_deepspeed_environment() -> None:
    """Make DeepSpeed start in this process. Under a bare `accelerate launch` (one process)
    nothing sets RANK / MASTER_ADDR, and DeepSpeed then looks for MPI (mpi4py, absent);
    giving it a one-process world avoids that."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"


@contextmanager
def whole_model_loading(accelerator: Any) -> Iterator[None]:
    """Where the model is built: under DeepSpeed ZeRO-3, load a pretrained base whole (not
    partitioned as it loads, which transformers does while a ZeRO-3 DeepSpeed config is
    registered), so that resizing the embeddings and initialising the new rows see real
    tensors; `accelerator.prepare` partitions it afterwards. Each process holds the whole
    base in CPU memory once, while it is built. The audio tokenizers' models (EnCodec, Mimi,
    WavLM, ...) are built in it too: partitioned, they would have empty weights."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or not plugin.hf_ds_config.is_zero3():
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()  # registered again for prepare and the export
