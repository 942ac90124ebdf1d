"""The token cache: every corpus row's audio encoded once, read back as `[K, F]` arrays.

Layout of one cached split (`<out>/<task>/<split>/`; read by `CachedSplit`,
mmllm.data.cached_split, through memory maps):

    index.json      header (rows, codebooks, dtype, entry count, shards, skipped rows):
                    written last, it marks the split complete
    entries.npy     (row, stream, shard, offset, frames) per entry in corpus order; keys.npy
                    its keys
    shards/         one codes file per part (a fixed block of `rows_per_part` rows), uint16
                    (int32 when codebook_size > 65536), each entry a contiguous [K, frames]
                    block; while the split is unfinished also a <part>.json per finished part
                    (its entries and skipped rows) and plan.json (rows per part: a rerun with
                    another value is refused)

and `<out>/cache.json` records the tokenizer config and hash and the corpus fingerprint; a
cache built for anything else is refused, never silently reused.

Resumable by construction: rows are split into fixed parts (`rows_per_part` rows, by
index); a part is written to a temporary file and renamed, so after a kill -9 every part is
either complete or absent (its .json, written after its .bin, marks it done), and a rerun
encodes only the missing ones. The parts are the cache's shards: "merging" reads only their
.json files and writes the index, so no process ever holds or copies the split's codes. The
result is byte-identical to an uninterrupted run. Under
`accelerate launch --num_processes N` (GPUs) or `torchrun --nproc_per_node N` (CPU, where
accelerate starts one process) process p encodes parts p, p+N, ...; the main process merges
after a barrier. The sharded cache is byte-identical to a one-process one (tested).

Streams: a row's input audio is stream "audio" (key = row id); its reference audio (SE clean,
SS sources, SV enrollment) are streams "ref0", "ref1", ... (key = "<id>#ref<j>").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset, load_from_disk
from tqdm import tqdm

from mmllm.audio.io import AudioError, decode_audio_value
from mmllm.config import config_hash, config_to_dict, from_dict, save_config
from mmllm.data.cached_split import (
    FORMAT,
    INDEX,
    SHARDS,
    CachedSplit,  # noqa: F401  (the read side, imported from here by most readers)
    CacheError,
    MissingCodes,  # noqa: F401
    shard_path,
    stream_index,
    write_split_index,
)
from mmllm.fileio import atomic_write_bytes, atomic_write_text, exclusive_lock
from mmllm.runtime import keep_freed_memory
from mmllm.tokenizers.base import AudioTokenizer, TokenizerConfig, pad_batch
from mmllm.tokenizers.kmeans import centroids_digest
from mmllm.tokenizers.registry import build_tokenizer

CACHE_CARD = "cache.json"


@dataclass
class AudioItem:
    key: str
    row: int
    stream: str
    wav: np.ndarray  # [T] at the tokenizer's sample rate


def storage_dtype(tokenizer: AudioTokenizer) -> np.dtype:
    """uint16 codes (int32 for codebooks beyond 65536), float16 for the features of a
    continuous backend (`tokenizer.continuous`, mmllm.tokenizers.backends.features)."""
    if tokenizer.continuous:
        return np.dtype(np.float16)
    return np.dtype(np.uint16) if tokenizer.codebook_size <= 65536 else np.dtype(np.int32)


def codes_hash(cfg: TokenizerConfig) -> str:
    """Hash of what determines the codes: the tokenizer config without its decode-side
    `vocoder` and the `device` it ran on (naming a vocoder keeps a cache valid), with the
    k-means centroids' content in place of their path (a refit into the same directory
    makes other codes; a moved project keeps its caches)."""
    centroids = centroids_digest(cfg.centroids) if cfg.centroids else None
    return config_hash(dataclasses.replace(cfg, vocoder=None, device="cpu", centroids=centroids))


def token_cache_dir(cache_root: str | Path, cfg: TokenizerConfig) -> Path:
    """Where pretraining and evaluation keep `cfg`'s token cache under `cache_root`: the
    tokenizer's name and the start of a hash of its codes hash and the on-disk format
    (`mfcc-kmeans-3fa9c2d1e0`), so two variants of one backend (other options, refitted
    centroids) never share a cache, and a new format extracts beside an old cache instead
    of failing on it."""
    name = hashlib.sha256(f"{codes_hash(cfg)}:format{FORMAT}".encode()).hexdigest()
    return Path(cache_root) / f"{cfg.name}-{name[:10]}"


def check_card_tokenizer(card: dict, cfg: TokenizerConfig, where: str | Path) -> None:
    """Refuse a cache card written for a tokenizer whose codes differ from `cfg`'s: another
    config (the decode-side `vocoder` and the `device` aside) or other centroids."""
    if card.get("codes_hash") == codes_hash(cfg):
        return
    built = from_dict(TokenizerConfig, card["tokenizer"], source=str(Path(where) / CACHE_CARD))
    same_config = config_to_dict(dataclasses.replace(built, vocoder=None, device="cpu")) == (
        config_to_dict(dataclasses.replace(cfg, vocoder=None, device="cpu"))
    )
    if "codes_hash" not in card:  # a card from before content hashes: compare what it can
        centroids_there = not built.centroids or Path(built.centroids).is_dir()
        if same_config or (centroids_there and codes_hash(built) == codes_hash(cfg)):
            return
    what = "other k-means centroids (refitted?)" if same_config else "another tokenizer config"
    raise CacheError(
        f"{where}: token cache was built with {what} ({config_to_dict(built)}, not "
        f"{config_to_dict(cfg)}); use another --out or delete it"
    )


def read_cache_card(cache_dir: str | Path, cfg: TokenizerConfig | None = None) -> dict:
    """The card of the token cache in `cache_dir`, checked against `cfg` when given."""
    path = Path(cache_dir) / CACHE_CARD
    if not path.is_file():
        raise CacheError(
            f"{cache_dir}: no token cache here (missing {CACHE_CARD}); run mmllm extract"
        )
    card = json.loads(path.read_text())
    if cfg is not None:
        check_card_tokenizer(card, cfg, cache_dir)
    return card


def check_or_write_card(
    out: Path, cfg: TokenizerConfig, tokenizer: AudioTokenizer, corpus: dict
) -> None:
    """Refuse a cache directory made for another tokenizer config or corpus; else record ours."""
    card = {
        "tokenizer_hash": config_hash(cfg),
        "codes_hash": codes_hash(cfg),  # what check_card_tokenizer compares
        "tokenizer": config_to_dict(cfg),
        "tokenizer_properties": tokenizer.describe(),
        "corpus": corpus,
    }
    path = out / CACHE_CARD
    if path.is_file():
        found = json.loads(path.read_text())
        check_card_tokenizer(found, cfg, out)
        # the corpus's content (fingerprints), not its path: a moved project keeps its caches
        if found.get("corpus", {}).get("fingerprints") != corpus["fingerprints"]:
            raise CacheError(
                f"{out}: token cache was built with a different corpus "
                f"({found.get('corpus')} != {corpus}); use another --out or delete it"
            )
        if "codes_hash" in found:
            return
        card = found | {"codes_hash": card["codes_hash"]}  # an older card, from now on strict
    atomic_write_text(path, json.dumps(card, indent=1, sort_keys=True))


def _row_items(row: dict, index: int, sample_rate: int) -> list[AudioItem]:
    """Decode a row's audio streams; AudioError names the row id and stream."""
    items = [
        AudioItem(
            row["id"], index, "audio", decode_audio_value(row["audio"], sample_rate, name=row["id"])
        )
    ]
    for j, ref in enumerate(row.get("refs") or []):
        key = f"{row['id']}#ref{j}"
        items.append(
            AudioItem(key, index, f"ref{j}", decode_audio_value(ref, sample_rate, name=key))
        )
    return items


def length_batches(items: list[AudioItem], max_batch_samples: int) -> Iterator[list[AudioItem]]:
    """Group items of similar length (sorted) so padded batches stay under max_batch_samples."""
    batch: list[AudioItem] = []
    for item in sorted(items, key=lambda it: it.wav.size):
        if batch and (len(batch) + 1) * item.wav.size > max_batch_samples:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def encode_items(
    tokenizer: AudioTokenizer, items: list[AudioItem], max_batch_samples: int
) -> dict[str, np.ndarray]:
    """key -> codes [K, F] (int64) for every item, encoded in length-bucketed batches."""
    out: dict[str, np.ndarray] = {}
    for batch in length_batches(items, max_batch_samples):
        wav, lengths = pad_batch([torch.from_numpy(it.wav) for it in batch])
        with torch.inference_mode():
            codes, frame_lengths = tokenizer.encode(wav, lengths)
        for item, item_codes, frames in zip(batch, codes, frame_lengths.tolist(), strict=True):
            out[item.key] = item_codes[:, :frames].cpu().numpy()
    return out


class DecodedParts(torch.utils.data.Dataset):
    """Part i of `parts` -> (part, rows, decoded audio items, skipped rows): read and
    decoded (and resampled) in DataLoader workers while the tokenizer encodes the previous
    part."""

    def __init__(self, dataset: Dataset, parts: list[int], rows_per_part: int, sample_rate: int):
        self.dataset, self.parts = dataset, parts
        self.rows_per_part, self.sample_rate = rows_per_part, sample_rate

    def __len__(self) -> int:
        return len(self.parts)

    def __getitem__(self, i: int) -> tuple[int, range, list[AudioItem], list[dict]]:
        part = self.parts[i]
        start = part * self.rows_per_part
        rows = range(start, min(start + self.rows_per_part, len(self.dataset)))
        items, skipped = [], []
        for index in rows:
            row = self.dataset[index]
            try:
                items.extend(_row_items(row, index, self.sample_rate))
            except AudioError as err:
                skipped.append({"id": row["id"], "row": index, "error": str(err)})
        return part, rows, items, skipped


def encode_part(
    tokenizer: AudioTokenizer,
    items: list[AudioItem],
    skipped: list[dict],
    split_dir: Path,
    part: int,
    max_batch_samples: int,
) -> float:
    """Encode the decoded items of one part into its shard: the codes (`shard_path`), then
    the .json that marks it done (entries and skipped rows), each written atomically.

    Returns the seconds of audio encoded."""
    codes = encode_items(tokenizer, items, max_batch_samples)
    dtype = storage_dtype(tokenizer)
    blocks = [np.ascontiguousarray(codes[it.key], dtype=dtype) for it in items]
    atomic_write_bytes(shard_path(split_dir, part), b"".join(b.tobytes() for b in blocks))
    entries = [
        {"key": it.key, "row": it.row, "stream": it.stream, "frames": block.shape[1]}
        for it, block in zip(items, blocks, strict=True)
    ]
    meta = json.dumps({"entries": entries, "skipped": skipped})
    atomic_write_text(part_meta_path(split_dir, part), meta)
    return sum(it.wav.size for it in items) / tokenizer.sample_rate


PART_PLAN = "plan.json"


def check_part_plan(split_dir: Path, rows_per_part: int, write: bool) -> None:
    """Parts of an unfinished extraction hold fixed blocks of rows: a rerun must cut the
    rows the same way (another --rows-per-part would encode rows twice), else it is refused."""
    plan = split_dir / SHARDS / PART_PLAN
    if plan.is_file():
        found = json.loads(plan.read_text())["rows_per_part"]
        if found != rows_per_part:
            raise CacheError(
                f"{split_dir}: an unfinished extraction cut its rows into parts of {found}; "
                f"rerun with --rows-per-part {found} (not {rows_per_part}) to finish it, or "
                f"delete the split's {SHARDS}/ folder"
            )
    elif write:
        atomic_write_text(plan, json.dumps({"rows_per_part": rows_per_part}))


def part_meta_path(split_dir: Path, part: int) -> Path:
    """The file that marks part `part` done: its entries and skipped rows."""
    return split_dir / SHARDS / f"{part:06d}.json"


def extract_split(
    tokenizer: AudioTokenizer,
    dataset: Dataset,
    split_dir: Path,
    rows_per_part: int = 256,
    max_batch_samples: int = 16000 * 120,
    process_index: int = 0,
    num_processes: int = 1,
    desc: str = "",
    decode_workers: int | None = None,
) -> dict:
    """Encode this process's share of the missing parts of one split (its audio decoded by
    `decode_workers` DataLoader workers, 0: in this process; default 1 with a GPU, where
    the tokenizer leaves the CPU free, else 0: on a CPU they compete, 46 s against 29 s for
    the default cache on 2 cores). Returns stats."""
    if decode_workers is None:
        decode_workers = 1 if torch.cuda.is_available() else 0
    num_parts = (len(dataset) + rows_per_part - 1) // rows_per_part
    check_part_plan(split_dir, rows_per_part, process_index == 0)
    todo = [
        p
        for p in range(process_index, num_parts, num_processes)
        if not part_meta_path(split_dir, p).is_file()
    ]
    stats = {"parts": len(todo), "audio_seconds": 0.0}
    started = time.perf_counter()
    decoded = torch.utils.data.DataLoader(
        DecodedParts(dataset, todo, rows_per_part, tokenizer.sample_rate),
        batch_size=None,
        num_workers=decode_workers,
        collate_fn=lambda item: item,  # audio items as they are
        prefetch_factor=2 if decode_workers else None,
    )
    with tqdm(total=len(todo) * rows_per_part, desc=desc, unit="row", disable=not todo) as bar:
        for part, rows, items, skipped in decoded:
            stats["audio_seconds"] += encode_part(
                tokenizer, items, skipped, split_dir, part, max_batch_samples
            )
            bar.update(len(rows))
            bar.set_postfix(
                audio_s_per_s=f"{stats['audio_seconds'] / (time.perf_counter() - started):.0f}"
            )
    return stats


def merge_split(
    split_dir: Path,
    num_rows: int,
    rows_per_part: int,
    num_codebooks: int,
    dtype: np.dtype,
    codebook_size: int | None = None,
) -> dict:
    """Index the finished parts as the split's shards: entries.npy, keys.npy and index.json
    (`write_split_index`; each atomically, the index last), then drop the parts' .json files,
    the plan and any temporary file a killed writer left. Reads only the parts' .json files:
    no codes are read or copied, whatever the split's size."""
    num_parts = (num_rows + rows_per_part - 1) // rows_per_part
    missing = [p for p in range(num_parts) if not part_meta_path(split_dir, p).is_file()]
    if missing:
        raise CacheError(
            f"{split_dir}: cannot merge, {len(missing)} parts missing (first: {missing[0]})"
        )
    entries, keys, skipped = [], [], []
    for part in range(num_parts):
        path = part_meta_path(split_dir, part)
        try:
            meta = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise CacheError(
                f"{path}: unreadable ({err}); delete it and rerun to encode its rows again"
            ) from err
        offset = 0
        for entry in meta["entries"]:
            stream = stream_index(entry["stream"])
            entries.append((entry["row"], stream, part, offset, entry["frames"]))
            keys.append(entry["key"])
            offset += entry["frames"] * num_codebooks
        skipped.extend(meta["skipped"])
    header = {
        "num_rows": num_rows,
        "num_codebooks": num_codebooks,
        "dtype": dtype.name,
        "codebook_size": codebook_size,  # reads check codes against it (corruption)
        "shards": num_parts,
        "skipped": skipped,
    }
    index = write_split_index(split_dir, entries, keys, header)
    keep = {shard_path(split_dir, part).name for part in range(num_parts)}
    for path in (split_dir / SHARDS).iterdir():
        if path.name not in keep:  # part .json files, the plan, stale temporary files
            path.unlink()
    return index


def extract_corpus(
    cfg: TokenizerConfig,
    data_dir: str | Path,
    out: str | Path,
    tasks: list[str] | None = None,
    splits: tuple[str, ...] = ("train", "valid", "test"),
    rows_per_part: int = 256,
    max_batch_seconds: float | None = None,
) -> Path:
    """Encode every task/split of a corpus directory (task subfolders of DatasetDicts) once.

    Runs sharded when launched with `accelerate launch --num_processes N`; safe to kill and
    rerun at any moment; one launch at a time (the main process holds `out`'s lock: a second
    one raises LockedError). Returns `out`.
    """
    # cpu=True lets torchrun's processes form a gloo group on machines without a GPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    with exclusive_lock(out) if state.is_main_process else nullcontext():
        return _extract(
            state, cfg, Path(data_dir), Path(out), tasks, splits, rows_per_part, max_batch_seconds
        )


def _extract(
    state: PartialState,
    cfg: TokenizerConfig,
    data_dir: Path,
    out: Path,
    tasks: list[str] | None,
    splits: tuple[str, ...],
    rows_per_part: int,
    max_batch_seconds: float | None,
) -> Path:
    keep_freed_memory()  # large activations without page faults (see mmllm/runtime.py)
    tasks = tasks or sorted(
        p.name for p in data_dir.iterdir() if (p / "dataset_dict.json").is_file()
    )
    if not tasks:
        raise CacheError(f"{data_dir}: no task folders (DatasetDict directories) to tokenize")
    corpora = {task: load_from_disk(str(data_dir / task)) for task in tasks}
    corpus_id = {
        task: {split: corpora[task][split]._fingerprint for split in splits} for task in tasks
    }
    tokenizer = build_tokenizer(cfg)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        check_or_write_card(
            out, cfg, tokenizer, {"path": str(data_dir.resolve()), "fingerprints": corpus_id}
        )
        save_config(cfg, out)
    state.wait_for_everyone()
    if max_batch_seconds is None:
        # bench/tokenizer_speed.py: on CPU, big padded batches of conv codecs run slower than small
        # ones (memory bound); on GPUs batching pays.
        max_batch_seconds = 120.0 if torch.cuda.is_available() else 8.0
    max_batch_samples = int(max_batch_seconds * tokenizer.sample_rate)
    totals = {"audio_seconds": 0.0, "skipped": 0}
    started = time.perf_counter()
    for task in tasks:
        for split in splits:
            split_dir = out / task / split
            if (split_dir / INDEX).is_file():
                continue
            stats = extract_split(
                tokenizer,
                corpora[task][split],
                split_dir,
                rows_per_part,
                max_batch_samples,
                state.process_index,
                state.num_processes,
                desc=f"{task}/{split}",
            )
            totals["audio_seconds"] += stats["audio_seconds"]
            state.wait_for_everyone()
            if state.is_main_process:
                index = merge_split(
                    split_dir,
                    len(corpora[task][split]),
                    rows_per_part,
                    tokenizer.num_codebooks,
                    storage_dtype(tokenizer),
                    None if tokenizer.continuous else tokenizer.codebook_size,
                )
                totals["skipped"] += len(index["skipped"])
                for bad in index["skipped"]:
                    print(f"skipped {task}/{split} row {bad['id']}: {bad['error']}")
            state.wait_for_everyone()
    if state.is_main_process:
        seconds = time.perf_counter() - started
        rate = totals["audio_seconds"] / seconds if seconds else 0.0
        share = "" if state.num_processes == 1 else f" by process 0 of {state.num_processes}"
        print(
            f"token cache {out}: {totals['audio_seconds']:.0f} s of audio encoded{share} at {rate:.0f} audio-s/s, "
            f"{totals['skipped']} rows skipped (listed in each split's {INDEX})"
        )
    return out
