"""Atomic writes: nothing already written is ever lost or half-written.

Every artifact mmllm writes goes to a temporary sibling first and is renamed into place,
so a crash (or kill -9) leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def state_dict_bytes(state: dict) -> bytes:
    """A state dict (tensors on any device, views allowed) as safetensors bytes."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block succeeds.

    An existing `path` stays intact until the new one is complete; on error the
    temporary directory is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


# ---- run logs and checkpoint pointers (the trainer and the vocoder trainer share them)


def append_jsonl(path: str | Path, record: dict) -> None:
    """One JSON line per record; a kill can at worst cut the last line short."""
    with Path(path).open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_jsonl(path: str | Path, last_step: int) -> None:
    """Drop records past `last_step` (a resumed run logs those steps again), atomically."""
    path = Path(path)
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


LATEST = "latest"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def publish_checkpoint(final: Path, keep: int, complete: Callable[[Path], bool]) -> None:
    """Point `latest` (beside `final`) at a checkpoint already renamed into place, then drop
    all but the newest `keep` complete ones. `latest` is written last, atomically."""
    atomic_write_text(final.parent / LATEST, final.name + "\n")
    finished = sorted(p for p in final.parent.glob("step-*") if complete(p))
    for old in finished[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def read_latest(root: str | Path) -> Path | None:
    """The checkpoint directory `root/latest` names, or None when there is none yet."""
    pointer = Path(root) / LATEST
    return pointer.parent / pointer.read_text().strip() if pointer.is_file() else None
