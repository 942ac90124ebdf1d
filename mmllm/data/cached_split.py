"""One cached split on disk, read through memory maps: what the token cache's readers use.

Layout of `<cache>/<task>/<split>/` (written by `mmllm.data.cache.merge_split`):

    index.json      header: num_rows, num_codebooks, dtype, codebook_size, count, skipped rows
    entries.npy     [count] (row, stream, offset, frames), sorted by (row, stream): the corpus
                    row, 0 for its input audio and j + 1 for its reference j, where its codes
                    start in codes.bin (in elements) and their frames
    keys.npy        [count] bytes: the entry keys (row id, or "<id>#ref<j>")
    codes.bin       all codes, each entry a contiguous [K, frames] block

Everything but the header is memory-mapped, so opening a split costs the same whatever its
size and the pages a process touches are the only ones it holds: a training process that
reads entries by corpus row (`get_row`) never builds a key table. `get(key)` builds one
(a dict over the keys) on first use, for evaluation, tools and tests.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from mmllm.fileio import atomic_write_bytes, atomic_write_text

INDEX = "index.json"
CODES = "codes.bin"
ENTRIES = "entries.npy"
KEYS = "keys.npy"
ENTRY_DTYPE = np.dtype([("row", "<i8"), ("stream", "<i8"), ("offset", "<i8"), ("frames", "<i8")])
STREAMS = 1 << 16  # (row, stream) -> row * STREAMS + stream, a sorted search key


class CacheError(ValueError):
    """A cache that does not match what was asked for, or is incomplete."""


class MissingCodes(KeyError):
    """No codes for a key: its row was skipped at extraction (bad audio) or never existed."""


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
        if "entries" in self.index or self.index.get("format") != 2:
            raise CacheError(
                f"{split_dir}: a token cache of an older format; delete it and extract again"
            )
        self.num_codebooks = self.index["num_codebooks"]
        self.codebook_size = self.index.get("codebook_size")  # None: features
        self.skipped = self.index["skipped"]
        count = self.index["count"]
        self.entries = _load(split_dir / ENTRIES, count)
        self.key_array = _load(split_dir / KEYS, count)
        itemsize = np.dtype(self.index["dtype"]).itemsize
        size = (split_dir / CODES).stat().st_size
        self.codes = (
            np.memmap(split_dir / CODES, dtype=self.index["dtype"], mode="r")
            if size
            else np.zeros(0)
        )
        expected = int((self.entries["frames"].sum()) * self.num_codebooks * itemsize)
        if size != expected:
            raise CacheError(
                f"{split_dir / CODES}: {size} bytes, its {INDEX} says {expected} (truncated or "
                "replaced); delete the split's folder and extract it again"
            )
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

    def _codes(self, position: int, what: str) -> np.ndarray:
        entry = self.entries[position]
        offset, frames = int(entry["offset"]), int(entry["frames"])
        size = frames * self.num_codebooks
        codes = np.asarray(self.codes[offset : offset + size]).reshape(self.num_codebooks, frames)
        if (
            self.codebook_size
            and codes.size
            and (codes.min() < 0 or codes.max() >= self.codebook_size)
        ):
            raise CacheError(
                f"{self.split_dir / CODES}: codes of {what!r} outside [0, {self.codebook_size}) "
                "(corrupted); delete the split's folder and extract it again"
            )
        return codes


def write_split_index(
    split_dir: Path, entries: list[tuple[int, int, int, int]], keys: list[str], header: dict
) -> dict:
    """Write a split's entries.npy, keys.npy and, last (it marks the split complete),
    index.json beside its codes.bin. entries: (row, stream, offset, frames) in corpus
    order; header: num_rows, num_codebooks, dtype, codebook_size, skipped. Returns the index."""
    table = np.array(entries, dtype=ENTRY_DTYPE)
    order = table["row"] * STREAMS + table["stream"]
    if len(order) > 1 and not (np.diff(order) > 0).all():
        raise CacheError(f"{split_dir}: entries out of corpus order")
    atomic_write_bytes(split_dir / ENTRIES, _npy_bytes(table))
    encoded = [key.encode() for key in keys]
    width = max(map(len, encoded), default=1)
    atomic_write_bytes(split_dir / KEYS, _npy_bytes(np.array(encoded, dtype=f"S{width}")))
    index = {"format": 2, **header, "count": len(table)}
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
