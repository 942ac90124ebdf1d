"""Load a public speech corpus the DASB benchmark uses and convert it to the row schema.

    cfg = load_config(CorpusConfig, "configs/corpora/librispeech.yaml", ["max_rows_per_split=200"])
    corpus = load_corpus(cfg)            # DatasetDict: train / valid / test, schema rows
    corpus.save_to_disk("data/librispeech")

or from the shell: `mmllm convert --config configs/corpora/librispeech.yaml
--out data/librispeech`.

This module finds and loads the source splits, checks their columns, and turns each source
row into schema rows (ids, provenance metadata, Arrow chunks) through the corpus's adapter;
what one corpus's row means is its adapter's business (`mmllm.corpora.adapters`, registered in
`ADAPTERS`). `CorpusConfig.path` is a hub id (`openslr/librispeech_asr`) or a local
directory: a `DatasetDict.save_to_disk` output, files `datasets.load_dataset` can read
(audiofolder, parquet, ...), or a corpus's own metadata files named as splits (`splits:
{train: data/train_data.csv}`, audio paths in them resolved against `path`).

Split specs (the values of `splits`) are source split names with an optional slice and
`+` to concatenate: `train.100`, `train[:95%]`, `train.clean.100+train.clean.360`.

Audio: datasets 5.x decodes `datasets.Audio` only through torchcodec, which does not load
here, so every source Audio column is cast to `Audio(decode=False)` and its cells are
decoded by `mmllm.audio.decode_audio_value` (16 kHz mono float32, resampled with soxr).
Output is built with `make_row` + `RowWriter` (streamed to an Arrow file, audio kept as FLAC),
never `Dataset.from_dict` (its Audio encoder needs torchcodec too); `num_proc` processes
decode, resample and encode the rows.

Errors name what went wrong and where: an unreachable hub id says so and points at a local
directory or the offline SynthDASB corpus; a wrong dataset lists the missing columns and
the ones present; a bad row names corpus, split, row index / id and column.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import datasets
from datasets import Audio, Dataset, DatasetDict
from datasets.exceptions import DatasetsError
from pydantic import field_validator
from tqdm import tqdm

from mmllm.audio.io import encode_flac, encode_wav
from mmllm.config import config_dataclass
from mmllm.corpora.adapters import (
    ADAPTERS,
    Adapter,
    CorpusError,
    SourceRow,
    SplitSource,
    get_adapter,
)
from mmllm.corpus.schema import SAMPLE_RATE, SPLITS, RowWriter, make_row

# ADAPTERS and CorpusError are re-exported: callers import the whole API from here.
__all__ = [
    "ADAPTERS",
    "CorpusConfig",
    "CorpusError",
    "convert_split",
    "load_corpus",
    "parse_split_spec",
]


logger = logging.getLogger(__name__)


SYNTH_HINT = "use the offline SynthDASB corpus: `mmllm synth --size tiny --out DIR`."


OFFLINE_HINT = (
    "Without network access, point `path` at a local copy (a directory written by "
    f"DatasetDict.save_to_disk, or files datasets.load_dataset can read), or {SYNTH_HINT}"
)


@config_dataclass
class CorpusConfig:
    """Which corpus to load and how to map its splits.

    name:      adapter name, one of ADAPTERS.
    path:      hub id (e.g. "openslr/librispeech_asr") or a local directory.
    subset:    hub config name (e.g. "clean", "v0.02").
    splits:    our split ("train", "valid", "test") -> source split spec; empty means the
               adapter's defaults. Only the splits named here are loaded.
    max_rows_per_split: at most this many output rows per split, from evenly spaced source
               rows (so label-sorted corpora such as Speech Commands keep every class).
    revision:  hub revision, e.g. "refs/convert/parquet" for a repo whose main branch still
               has a loading script (datasets >= 4 no longer runs scripts).
    trust_remote_code: forwarded to datasets only when set (ignored by datasets >= 4).
    audio_format: how the rows keep their audio: "flac" (lossless 16-bit, about half a WAV's
               size; the default) or "wav".
    """

    name: str
    path: str
    subset: str | None = None
    splits: dict[str, str] = dataclasses.field(default_factory=dict)
    max_rows_per_split: int | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    audio_format: Literal["flac", "wav"] = "flac"

    @field_validator("name")
    @classmethod
    def _known_adapter(cls, name: str) -> str:
        get_adapter(name)
        return name

    @field_validator("splits")
    @classmethod
    def _known_splits(cls, splits: dict[str, str]) -> dict[str, str]:
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; expected some of {list(SPLITS)}")
        empty = [s for s, spec in splits.items() if not spec.strip()]
        if empty:
            raise ValueError(f"split(s) {empty} map to an empty source split")
        return splits

    @field_validator("max_rows_per_split")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be at least 1 (or null for all rows)")
        return value


_SPLIT_PART = re.compile(r"^(?P<name>[^\[\]]+?)\s*(?:\[(?P<start>[^:\]]*):(?P<stop>[^\]]*)\])?$")


_TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


def parse_split_spec(spec: str) -> list[tuple[str, str | None, str | None]]:
    """'a[:95%]+b' -> [('a', None, '95%'), ('b', None, None)]: (source split, start, stop)."""
    parts = []
    for part in spec.split("+"):
        match = _SPLIT_PART.match(part.strip())
        if match is None or not match.group("name").strip():
            raise CorpusError(f"bad split spec {spec!r}: expected NAME, NAME[start:stop] or A+B")
        parts.append(
            (match.group("name").strip(), match.group("start") or None, match.group("stop") or None)
        )
    return parts


def _slice_bound(bound: str | None, length: int, default: int, spec: str) -> int:
    if bound is None:
        return default
    try:
        if bound.endswith("%"):
            value = math.floor(length * float(bound[:-1]) / 100 + 0.5)
        else:
            value = int(bound)
    except ValueError as err:
        raise CorpusError(f"bad slice bound {bound!r} in split spec {spec!r}") from err
    value = value + length if value < 0 else value
    return min(max(value, 0), length)


def _read_table_file(file: Path) -> Dataset:
    """A metadata file (csv / tsv / json lines / parquet) as an in-memory Dataset."""
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    suffix = file.suffix.lower()
    if suffix == ".csv":
        table = pa_csv.read_csv(file)
    elif suffix == ".tsv":
        table = pa_csv.read_csv(file, parse_options=pa_csv.ParseOptions(delimiter="\t"))
    elif suffix in (".json", ".jsonl"):
        table = pa_json.read_json(file)
    else:
        table = pq.read_table(file)
    return Dataset(table)


class _SourceLoader:
    """Loads source splits of one corpus once each (hub, save_to_disk dir, files)."""

    def __init__(self, cfg: CorpusConfig):
        self.cfg = cfg
        path = Path(cfg.path).expanduser()
        self.local = path if path.exists() else None
        self._saved: Dataset | DatasetDict | None = None
        self._cache: dict[str, Dataset] = {}

    def describe(self) -> str:
        where = f"local directory '{self.local}'" if self.local else f"hub id '{self.cfg.path}'"
        subset = f" (subset '{self.cfg.subset}')" if self.cfg.subset else ""
        return f"corpus '{self.cfg.name}' from {where}{subset}"

    def split(self, name: str) -> Dataset:
        if name not in self._cache:
            self._cache[name] = _decode_false(self._load(name))
        return self._cache[name]

    def _load(self, name: str) -> Dataset:
        if name.lower().endswith(_TABLE_SUFFIXES):
            return self._from_file(name)
        if self.local is not None and self._is_saved_dataset():
            return self._from_saved(name)
        return self._from_load_dataset(name)

    def _from_file(self, name: str) -> Dataset:
        if self.local is None:
            raise CorpusError(
                f"corpus '{self.cfg.name}': split '{name}' is a file under `path`, but the local "
                f"directory '{self.cfg.path}' does not exist. Prepare the corpus there first (see "
                f"configs/corpora/{self.cfg.name}.yaml) or {SYNTH_HINT}"
            )
        file = self.local / name
        if not file.is_file():
            raise CorpusError(f"{self.describe()}: split file '{file}' not found")
        return _read_table_file(file)

    def _is_saved_dataset(self) -> bool:
        return any((self.local / f).is_file() for f in ("dataset_dict.json", "state.json"))

    def _from_saved(self, name: str) -> Dataset:
        if self._saved is None:
            self._saved = datasets.load_from_disk(str(self.local))
        saved = self._saved
        if isinstance(saved, Dataset):  # a single saved split answers to its own split name
            saved = DatasetDict({str(saved.split or "train"): saved})
        if name not in saved:
            raise CorpusError(
                f"{self.describe()}: no split '{name}' (it has {sorted(saved)}); "
                "map our splits to its names with `splits` in the config"
            )
        return saved[name]

    def _from_load_dataset(self, name: str) -> Dataset:
        cfg = self.cfg
        kwargs: dict[str, Any] = {"revision": cfg.revision} if cfg.revision else {}
        if cfg.trust_remote_code:
            kwargs["trust_remote_code"] = True
        try:
            return datasets.load_dataset(
                str(self.local or cfg.path), cfg.subset, split=name, **kwargs
            )
        except ConnectionError as err:
            raise CorpusError(
                f"corpus '{cfg.name}': the hub id '{cfg.path}' could not be reached ({err}), "
                f"and no local directory '{cfg.path}' exists. {OFFLINE_HINT}"
            ) from err
        except FileNotFoundError as err:  # includes datasets' DatasetNotFoundError
            raise CorpusError(
                f"corpus '{cfg.name}': '{cfg.path}' is neither a local directory nor a dataset "
                f"the hub has (or it is gated / not cached offline): {str(err).rstrip('.')}. "
                f"{OFFLINE_HINT}"
            ) from err
        except DatasetsError as err:  # e.g. building an audiofolder, which needs torchcodec
            cause = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            hint = ""
            if isinstance(cause, ImportError):
                hint = (
                    " datasets needs torchcodec to build a dataset from audio files (audiofolder) "
                    "and it does not load here: list the files in a CSV split file instead, or "
                    "use a save_to_disk or parquet copy."
                )
            raise CorpusError(
                f"{self.describe()}: cannot load split '{name}': {cause!r}.{hint}"
            ) from err
        except (ValueError, KeyError) as err:  # unknown config or split name
            raise CorpusError(
                f"{self.describe()}: cannot load split '{name}': {str(err).rstrip('.')}"
            ) from err
        except RuntimeError as err:
            hint = ""
            if "script" in str(err).lower():
                hint = " This repo has a loading script; try `revision: refs/convert/parquet`."
            raise CorpusError(
                f"{self.describe()}: cannot load split '{name}': {str(err).rstrip('.')}.{hint}"
            ) from err


def _decode_false(dataset: Dataset) -> Dataset:
    """Cast every Audio column to decode=False: cells stay {'bytes', 'path'} (no torchcodec)."""
    for column, feature in (dataset.features or {}).items():
        if isinstance(feature, Audio) and feature.decode:
            dataset = dataset.cast_column(
                column, Audio(sampling_rate=feature.sampling_rate, decode=False)
            )
    return dataset


def _source_dataset(loader: _SourceLoader, spec: str) -> Dataset:
    """Load, slice and concatenate the parts of one split spec."""
    parts = []
    for name, start, stop in parse_split_spec(spec):
        dataset = loader.split(name)
        if start is not None or stop is not None:
            n = len(dataset)
            lo, hi = _slice_bound(start, n, 0, spec), _slice_bound(stop, n, n, spec)
            dataset = dataset.select(range(lo, max(lo, hi)))
        parts.append(dataset)
    if len(parts) == 1:
        return parts[0]
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as err:
        raise CorpusError(
            f"{loader.describe()}: cannot concatenate the parts of {spec!r}: {err}"
        ) from err


def _check_columns(adapter: Adapter, dataset: Dataset, where: str) -> None:
    present = set(dataset.column_names)
    missing = [group for group in adapter.columns if not present & set(group)]
    if missing:
        names = ", ".join(" or ".join(repr(c) for c in group) for group in missing)
        raise CorpusError(
            f"{where}: missing column(s) {names} for adapter '{adapter.name}'; the dataset has "
            f"columns {sorted(present)}. Is `path` the right dataset for this adapter?"
        )


def _row_key(source_id: str | None, index: int) -> str:
    if source_id is None:
        return f"{index:06d}"
    key = re.sub(r"\.(wav|flac|mp3|ogg)$", "", source_id, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or f"{index:06d}"


def _row_indices(length: int, max_rows: int | None) -> list[int] | range:
    """All rows, or `max_rows` evenly spaced ones (deterministic, covers sorted labels)."""
    if max_rows is None or max_rows >= length:
        return range(length)
    return [k * length // max_rows for k in range(max_rows)]


BLOCK_ROWS = 64  # source rows a worker converts per task (ordered; bounds what is in flight)

_WORKER: dict[str, Any] = {}  # what _convert_rows reads: set once per worker process


def _init_worker(adapter_name: str, source: SplitSource, audio_format: str) -> None:
    _WORKER.update(
        adapter=get_adapter(adapter_name),
        source=source,
        encode=encode_flac if audio_format == "flac" else encode_wav,
    )


def _convert_rows(indices: list[int]) -> list[tuple[int, str | None, list[dict]]]:
    """Source rows -> (index, source id, examples) with their audio encoded to bytes: the
    decoding, resampling and encoding, which is what parallel workers are for."""
    adapter, source, encode = _WORKER["adapter"], _WORKER["source"], _WORKER["encode"]
    out = []
    for index in indices:
        row = SourceRow(source.dataset[int(index)], int(index), source, adapter.id_columns)
        examples = []
        for example in adapter.convert(row):
            example = dict(example)
            example["audio"] = encode(example["audio"], SAMPLE_RATE)
            if example.get("refs"):
                example["refs"] = [encode(ref, SAMPLE_RATE) for ref in example["refs"]]
            examples.append(example)
        out.append((row.index, row.source_id, examples))
    return out


def convert_split(
    adapter: Adapter,
    source: SplitSource,
    max_rows: int | None = None,
    progress: bool = True,
    num_proc: int = 1,
    work_dir: str | Path | None = None,
    audio_format: str = "flac",
) -> Dataset:
    """Convert one source split to a schema Dataset (at most `max_rows` rows).

    `num_proc` processes decode, resample and encode blocks of source rows; this process
    names the rows (in source order, so the result does not depend on `num_proc`) and
    streams them to an Arrow file in `work_dir`, returned memory-mapped (no `work_dir`: a
    temporary one, the Dataset read into memory)."""
    indices = list(_row_indices(len(source.dataset), max_rows))
    blocks = [indices[i : i + BLOCK_ROWS] for i in range(0, len(indices), BLOCK_ROWS)]
    seen: set[str] = set()
    produced = dropped = 0
    name = f"{source.corpus}-{source.split}"
    with (
        tempfile.TemporaryDirectory() if work_dir is None else contextlib.nullcontext(work_dir)
    ) as folder:
        writer = RowWriter(Path(folder) / f"{name}.arrow", name)
        init = (adapter.name, source, audio_format)
        pool = None
        if num_proc > 1 and len(blocks) > 1:
            pool = multiprocessing.get_context("fork").Pool(num_proc, _init_worker, init)
            converted = pool.imap(_convert_rows, blocks)
        else:
            _init_worker(*init)
            converted = map(_convert_rows, blocks)
        bar = tqdm(total=len(indices), desc=f"{source.corpus}/{source.split}", unit="row",
                   disable=not progress)  # fmt: skip
        try:
            for block in converted:
                rows = []
                for index, source_id, examples in block:
                    dropped += not examples
                    for example in examples:
                        if max_rows is not None and produced >= max_rows:
                            break
                        row_id = f"{name}-{_row_key(source_id, index)}"
                        row_id += example.pop("suffix", "")
                        if row_id in seen:
                            row_id = f"{row_id}-{index}"
                        seen.add(row_id)
                        meta = {"source_split": source.spec, "source_index": index}
                        if source_id is not None:
                            meta["source_id"] = source_id
                        extra = example.pop("meta", None) or {}
                        meta.update({k: v for k, v in extra.items() if v is not None})
                        audio = example.pop("audio")
                        rows.append(make_row(row_id, adapter.task, audio, meta=meta, **example))
                        produced += 1
                writer.write(rows)
                bar.update(len(block))
                if max_rows is not None and produced >= max_rows:
                    break
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()
        out = writer.finish(in_memory=work_dir is None)
    if dropped:
        logger.info(
            "%s/%s: dropped %d source rows the task does not use",
            source.corpus,
            source.split,
            dropped,
        )
    return out


def load_corpus(
    cfg: CorpusConfig,
    progress: bool = True,
    num_proc: int = 1,
    work_dir: str | Path | None = None,
) -> DatasetDict:
    """Load a public corpus and convert it to the schema: DatasetDict with our split names.

    Only the splits in `cfg.splits` (or the adapter's defaults when empty) are produced, in
    the order train, valid, test. `num_proc` processes convert rows; with `work_dir` the
    splits are Arrow files there, memory-mapped (a corpus of any size), else they are read
    into memory. Raises CorpusError naming corpus, path, split and row.
    """
    adapter = get_adapter(cfg.name)
    split_specs = dict(cfg.splits) or adapter.default_splits
    loader = _SourceLoader(cfg)
    out = {}
    for split in (s for s in SPLITS if s in split_specs):
        spec = split_specs[split]
        dataset = _source_dataset(loader, spec)
        _check_columns(adapter, dataset, f"{loader.describe()} split '{split}' (source '{spec}')")
        source = SplitSource(cfg.name, split, spec, dataset, loader.local)
        out[split] = convert_split(
            adapter, source, cfg.max_rows_per_split, progress, num_proc, work_dir, cfg.audio_format
        )
    return DatasetDict(out)
