"""One cached split on disk, read through memory maps: what the token cache's readers use.

Layout of `<cache>/<task>/<split>/` (written by `mmllm.data.cache.extract_split` and
`merge_split`):

    index.json      header: num_rows, num_codebooks, dtype, codebook_size, count, shards,
                    skipped rows
    entries.npy     [count] (row, stream, shard, offset, frames), sorted by (row, stream): the
                    corpus row, 0 for its input audio and j + 1 for its reference j, the shard
                    file holding its codes, where they start in it (in elements) and their frames
    keys.npy        [count] bytes: the entry keys (row id, or "<id>#ref<j>")
    shards/<shard>.bin  codes, each entry a contiguous [K, frames] block; one file per block
                    of rows, written by whichever process encoded it, never copied again

The entry table and keys are memory-mapped, so opening a split costs the same whatever its
size; codes are read with `pread` (a few open shard files per process), so they sit in the
kernel's page cache, shared by every process, and never in a process's resident memory
(memory-mapped codes made a training process's RSS grow with how much of the corpus it had
read). A training process that reads entries by corpus row (`get_row`) never builds a key
table; `get(key)` builds one (a dict over the keys) on first use, for evaluation and tools.
"""

from __future__ import annotations

import collections
import io
import json
import os
from pathlib import Path

import numpy as np

from mmllm.fileio import atomic_write_bytes, atomic_write_text

INDEX = "index.json"
SHARDS = "shards"
ENTRIES = "entries.npy"
KEYS = "keys.npy"
FORMAT = 3
ENTRY_DTYPE = np.dtype(
    [("row", "<i8"), ("stream", "<i8"), ("shard", "<i8"), ("offset", "<i8"), ("frames", "<i8")]
)
OPEN_SHARDS = 64  # shard files a process keeps open, the least recently read closed first
STREAMS = 1 << 16  # (row, stream) -> row * STREAMS + stream, a sorted search key


class CacheError(ValueError):
    """A cache that does not match what was asked for, or is incomplete."""


class MissingCodes(KeyError):
    """No codes for a key: its row was skipped at extraction (bad audio) or never existed."""


def shard_path(split_dir: Path, shard: int) -> Path:
    """The codes file of one shard of a split."""
    return split_dir / SHARDS / f"{shard:06d}.bin"


def stream_index(stream: str) -> int:
    """ "audio" -> 0, "ref<j>" -> j + 1."""
    return 0 if stream == "audio" else int(stream[3:]) + 1


class CachedSplit:
    """Read side: codes of one cached split through memmaps (no decoding, no copies)."""

    def __init__(self, split_dir: str | Path) -> None:
        split_dir = self.split_dir = Path(split_dir)
        if not (split_dir / INDEX).is_file():
            raise CacheError(
                f"{split_dir}: no complete token cache here (missing {INDEX}); run mmllm extract"
            )
        self.index = json.loads((split_dir / INDEX).read_text())
        if "entries" in self.index or self.index.get("format") != FORMAT:
            raise CacheError(
                f"{split_dir}: a token cache of an older format; delete it and extract again"
            )
        self.num_codebooks = self.index["num_codebooks"]
        self.codebook_size = self.index.get("codebook_size")  # None: features
        self.skipped = self.index["skipped"]
        self.dtype = np.dtype(self.index["dtype"])
        count = self.index["count"]
        self.entries = _load(split_dir / ENTRIES, count)
        self.key_array = _load(split_dir / KEYS, count)
        # every shard's size against its entries: a truncated or replaced shard is named on
        # open (one stat per shard), not when a training step reaches it
        expected = np.bincount(
            self.entries["shard"],
            weights=self.entries["frames"],
            minlength=self.index["shards"],
        )
        for shard, frames in enumerate(expected.tolist()):
            path = shard_path(split_dir, shard)
            size = path.stat().st_size if path.is_file() else None
            want = int(frames) * self.num_codebooks * self.dtype.itemsize
            if size != want:
                found = "missing" if size is None else f"{size} bytes"
                raise CacheError(
                    f"{path}: {found}, its split's {INDEX} says {want} bytes (truncated or "
                    "replaced); delete the split's folder and extract it again"
                )
        self._files: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._search: np.ndarray | None = None
        self._by_key: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def entry_keys(self) -> list[str]:
        return [key.decode() for key in self.key_array.tolist()]

    @property
    def by_key(self) -> dict[str, int]:
        """key -> entry position (built on first use)."""
        if self._by_key is None:
            self._by_key = {key: i for i, key in enumerate(self.entry_keys())}
        return self._by_key

    def get(self, key: str) -> np.ndarray:
        """codes [K, F] of one entry (row id, or "<id>#ref<j>"); MissingCodes if absent."""
        if key not in self.by_key:
            raise MissingCodes(f"{self.split_dir}: no codes for {key!r}")
        return self._codes(self.by_key[key], key)

    def get_row(self, row: int, stream: int = 0) -> np.ndarray:
        """codes [K, F] of corpus row `row`'s stream (0 its audio, j + 1 its reference j)."""
        if self._search is None:
            self._search = self.entries["row"] * STREAMS + self.entries["stream"]
        target = row * STREAMS + stream
        position = int(np.searchsorted(self._search, target))
        if position == len(self._search) or self._search[position] != target:
            raise MissingCodes(f"{self.split_dir}: no codes for row {row} stream {stream}")
        return self._codes(position, f"row {row}")

    def _file(self, shard: int) -> int:
        """An open descriptor of one shard (the OPEN_SHARDS last used stay open)."""
        if shard in self._files:
            self._files.move_to_end(shard)
        else:
            if len(self._files) >= OPEN_SHARDS:
                os.close(self._files.popitem(last=False)[1])
            self._files[shard] = os.open(shard_path(self.split_dir, shard), os.O_RDONLY)
        return self._files[shard]

    def __getstate__(self) -> dict:  # descriptors stay with the process that opened them
        return self.__dict__ | {"_files": collections.OrderedDict()}

    def __del__(self) -> None:
        for fd in getattr(self, "_files", {}).values():
            os.close(fd)

    def _codes(self, position: int, what: str) -> np.ndarray:
        entry = self.entries[position]
        shard, offset, frames = int(entry["shard"]), int(entry["offset"]), int(entry["frames"])
        itemsize = self.dtype.itemsize
        data = os.pread(
            self._file(shard), frames * self.num_codebooks * itemsize, offset * itemsize
        )
        if len(data) != frames * self.num_codebooks * itemsize:
            raise CacheError(
                f"{shard_path(self.split_dir, shard)}: ends before the codes of {what!r} "
                "(truncated); delete the split's folder and extract it again"
            )
        codes = np.frombuffer(data, self.dtype).reshape(self.num_codebooks, frames)
        if (
            self.codebook_size
            and codes.size
            and (codes.min() < 0 or codes.max() >= self.codebook_size)
        ):
            raise CacheError(
                f"{shard_path(self.split_dir, shard)}: codes of {what!r} outside "
                f"[0, {self.codebook_size}) (corrupted); delete the split's folder and extract "
                "it again"
            )
        return codes


def write_split_index(
    split_dir: Path,
    entries: list[tuple[int, int, int, int, int]],
    keys: list[str],
    header: dict,
) -> dict:
    """Write a split's entries.npy, keys.npy and, last (it marks the split complete),
    index.json beside its shards. entries: (row, stream, shard, offset, frames) in corpus
    order; header: num_rows, num_codebooks, dtype, codebook_size, shards, skipped. Returns
    the index."""
    table = np.array(entries, dtype=ENTRY_DTYPE)
    order = table["row"] * STREAMS + table["stream"]
    if len(order) > 1 and not (np.diff(order) > 0).all():
        raise CacheError(f"{split_dir}: entries out of corpus order")
    atomic_write_bytes(split_dir / ENTRIES, _npy_bytes(table))
    encoded = [key.encode() for key in keys]
    width = max(map(len, encoded), default=1)
    atomic_write_bytes(split_dir / KEYS, _npy_bytes(np.array(encoded, dtype=f"S{width}")))
    index = {"format": FORMAT, **header, "count": len(table)}
    atomic_write_text(split_dir / INDEX, json.dumps(index))
    return index


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _load(path: Path, count: int) -> np.ndarray:
    if not path.is_file():
        raise CacheError(f"{path}: missing; delete the split's folder and extract it again")
    array = np.load(path, mmap_mode="r") if count else np.load(path)
    if len(array) != count:
        raise CacheError(f"{path}: {len(array)} entries, its {INDEX} says {count}")
    return array
