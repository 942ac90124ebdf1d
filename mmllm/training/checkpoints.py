"""The one checkpoint mechanism of every trainer (the LLM pretrainer and the vocoder trainer).

    run_dir/run.json                   what the run is (config hash, tokenizer...): checked on
                                       every start, so a run directory never mixes two runs
    run_dir/checkpoints/step-000200/   one complete training state per saved step
        trainer_state.json             its presence marks the step complete
        manifest.sha256.json           SHA-256 of every file, checked before a resume
    run_dir/checkpoints/latest         the name of the newest complete step (written last)

A save writes into `.tmp-step-...`, renames it into place, then points `latest` at it and
drops all but the newest `keep`: a kill at any moment leaves the previous checkpoint and
`latest` intact, and a resumed run continues bit for bit (model, optimizer, RNG, step).
What goes inside a step directory is the caller's (`write_state`): accelerate's
`save_state` for the pretrainer, safetensors + a weights-only torch file for the vocoder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmllm.fileio import (
    LATEST,
    atomic_write_text,
    publish_checkpoint,
    read_latest,
    step_dir,
    verify_manifest,
    write_manifest,
)

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
RUN_CARD = "run.json"


def fault_point(name: str, count: int) -> None:
    """Test hook: MMLLM_FAULT="<name>:<count>" kills this process (SIGKILL, no cleanup) the
    `count`-th time it reaches `name`. Used to prove checkpoints survive a kill."""
    if os.environ.get("MMLLM_FAULT") == f"{name}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


def check_run(run_dir: str | Path, identity: dict[str, Any], what: str = "config") -> None:
    """Refuse to continue a run directory started as another run; record `identity` (any
    JSON-able dict: config hash, tokenizer signature) on the first start.

    Raises ValueError naming the keys that differ."""
    path = Path(run_dir) / RUN_CARD
    identity = json.loads(json.dumps(identity))  # tuples -> lists, as read back
    if path.is_file():
        found = json.loads(path.read_text())
        if found != identity:
            differ = sorted(
                k for k in found.keys() | identity.keys() if found.get(k) != identity.get(k)
            )
            raise ValueError(
                f"{run_dir}: run directory holds a run with another {what} (differs in "
                f"{', '.join(differ)}: {found} != {identity}); use another run directory or delete it"
            )
    else:
        atomic_write_text(path, json.dumps(identity, indent=1))


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    state: dict[str, Any],
    keep: int,
    write_state: Callable[[Path], None],
    *,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    saves: int = 0,
) -> Path:
    """Save the training state of `step` and publish it as `latest` -> its directory.

    write_state(tmp): writes the model/optimizer/RNG files into `tmp` (every process of a
    distributed run calls it, between two `barrier()`s); `state` (JSON: step, anything the
    loop needs back) goes to trainer_state.json by the main process, last. `saves` counts
    this run's saves for the "checkpoint-save" fault point (tests)."""
    final = step_dir(Path(run_dir) / CHECKPOINTS, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    write_state(tmp)
    barrier()
    if is_main:
        atomic_write_text(tmp / TRAINER_STATE, json.dumps({**state, "step": step}, indent=1))
        write_manifest(tmp)
        fault_point("checkpoint-save", saves)  # tests: die with a complete tmp, before rename
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        publish_checkpoint(final, keep, complete=lambda p: (p / TRAINER_STATE).is_file())
    barrier()
    return final


def latest_checkpoint(run_dir: str | Path, clean: bool = False) -> Path | None:
    """The checkpoint `latest` names, or None. Half-written `.tmp-*` directories (what a
    kill during a save leaves behind) are never returned; `clean` removes them and checks
    every file against the checkpoint's SHA-256 manifest (only the main process may: the
    others read what it checked). Raises IntegrityError naming a file that differs."""
    root = Path(run_dir) / CHECKPOINTS
    if clean:
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    path = read_latest(root)
    if path is not None and not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"{path.parent / LATEST} names {path.name}, which is not a complete checkpoint"
        )
    if path is not None and clean:
        verify_manifest(path)
    return path


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """trainer_state.json of a checkpoint directory (has at least "step")."""
    return json.loads((checkpoint / TRAINER_STATE).read_text())
