"""Atomic writes: nothing already written is ever lost or half-written.

Every artifact mmllm writes goes to a temporary sibling first and is renamed into place,
so a crash (or kill -9) leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_open(path: str | Path) -> Iterator[Any]:
    """A binary file handle whose contents appear at `path` only when the block completes
    (written to a temporary file in the same directory, synced, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory, then rename."""
    with atomic_open(path) as handle:
        handle.write(data)


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


# ---- one writer per output


class LockedError(RuntimeError):
    """An output directory another live process is writing."""


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the output `path` (a directory, existing or not) while the
    block runs: a second writer raises LockedError naming the holder's pid, at once.

    The lock is `.NAME.lock` beside `path` (so a directory replaced by rename keeps it), a
    POSIX record lock (`fcntl.lockf`) that the kernel drops when the holder exits, even
    killed: a stale lock file never blocks anyone. Unlike `flock`, it is not inherited by
    forked children (DataLoader workers), so a killed holder's workers do not keep it."""
    import errno
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    handle = open(lock, "a+")  # noqa: SIM115 (held open for the whole block)
    try:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise LockedError(
                f"{path}: another process (pid {holder}) is writing it; wait for it to finish "
                "or use another directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


# ---- integrity manifests of saved directories (checkpoints, exported models)

MANIFEST = "manifest.sha256.json"


class IntegrityError(ValueError):
    """A saved directory whose files are not the ones its manifest recorded."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | Path) -> None:
    """Record the SHA-256 of every file below `directory` in MANIFEST (written last)."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    digests = {str(p.relative_to(directory)): file_sha256(p) for p in files}
    atomic_write_text(directory / MANIFEST, json.dumps(digests, indent=1))


def verify_manifest(directory: str | Path) -> None:
    """Raise IntegrityError naming the first file of `directory` that is missing or differs
    from its recorded SHA-256 (or the manifest itself when it is missing or unreadable)."""
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        digests = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise IntegrityError(f"{path}: no readable integrity manifest ({err})") from None
    for name, expected in digests.items():
        file = directory / name
        if not file.is_file():
            raise IntegrityError(f"{file}: missing (listed in {MANIFEST})")
        if file_sha256(file) != expected:
            raise IntegrityError(f"{file}: contents differ from {MANIFEST} (corrupted or edited)")


# ---- run logs and checkpoint pointers (the trainer and the vocoder trainer share them)


def append_jsonl(path: str | Path, record: dict) -> None:
    """One JSON line per record; a kill can at worst cut the last line short."""
    with Path(path).open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines log. A torn last line (what a kill during a write leaves)
    is dropped; an unreadable line before it raises ValueError naming file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break  # torn by a kill: the step it belonged to runs again
            raise ValueError(f"{path}:{number}: not a JSON record ({line[:60]!r})") from None
    return records


def truncate_jsonl(path: str | Path, last_step: int) -> None:
    """Keep only records up to `last_step` (a resumed run logs later steps again), atomically;
    a torn last line is dropped."""
    path = Path(path)
    if path.is_file():
        kept = [r for r in read_jsonl(path) if r["step"] <= last_step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def log_at_step(path: str | Path, record: dict) -> None:
    """Log `record` as the one entry of its step: entries of that step or later (left by an
    earlier attempt of a rerun) are dropped first, so a rerun never duplicates an entry."""
    path = Path(path)
    kept = [r for r in read_jsonl(path) if r["step"] < record["step"]]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in [*kept, record]))


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
