"""Reading a corpus directory (one `datasets` DatasetDict per task folder, the layout
`mmllm synth` and `mmllm convert` write): `load_task`, `corpus_tasks`, and
`corpus_waveforms` for fitting tokenizers on a corpus.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict, load_from_disk
from tqdm import tqdm

from mmllm.audio.io import decode_audio_value
from mmllm.corpus.schema import SAMPLE_RATE, TASKS


def load_task(root: str | Path, task: str) -> DatasetDict:
    """Load one task's DatasetDict from a SynthDASB directory, naming what is missing."""
    path = Path(root) / task
    if not path.is_dir():
        raise FileNotFoundError(f"{root}: no SynthDASB task {task!r} (build it with mmllm synth)")
    return load_from_disk(str(path))


def corpus_tasks(root: str | Path, tasks: Sequence[str] = TASKS) -> tuple[str, ...]:
    """The `tasks` a SynthDASB directory has on disk, in order (a KS-only or ASR-only corpus
    is a corpus too); none of them is an error naming the directory."""
    found = tuple(task for task in tasks if (Path(root) / task).is_dir())
    if not found:
        raise FileNotFoundError(f"{root}: none of the SynthDASB tasks {list(tasks)} found")
    return found


def corpus_waveforms(
    root: str | Path,
    tasks: Sequence[str],
    splits: Sequence[str],
    sample_rate: int = SAMPLE_RATE,
    shuffle_seed: int | None = None,
) -> Iterator[torch.Tensor]:
    """Every `audio` cell of `tasks` x `splits` of a corpus directory -> wav [T] float32 at
    `sample_rate`, with a progress bar (used to fit tokenizers on a corpus): in corpus order,
    or with `shuffle_seed` in a seeded random order over all of them, so that a caller that
    stops early has read a uniform sample of rows (only the rows read are decoded)."""
    corpora = {task: load_task(root, task) for task in tasks}
    for task, data in corpora.items():
        missing = [split for split in splits if split not in data]
        if missing:
            raise KeyError(f"{root}/{task}: no split {missing[0]!r} (has {list(data)})")
    parts = [
        corpora[task][split].select_columns(["id", "audio"]) for task in tasks for split in splits
    ]
    starts = np.cumsum([0] + [part.num_rows for part in parts])
    order = np.arange(starts[-1])
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(order)
    with tqdm(total=len(order), desc="audio", unit="row") as bar:
        for position in order.tolist():
            part = int(np.searchsorted(starts, position, side="right")) - 1
            row = parts[part][position - int(starts[part])]
            yield torch.from_numpy(decode_audio_value(row["audio"], sample_rate, name=row["id"]))
            bar.update()
