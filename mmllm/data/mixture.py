"""Training documents from a corpus, its token caches and a mixture of sources.

A *source* is a task (`asr`, `ks`, ..., `tts`: its rows rendered by the task template,
loss on the target), an unconditional LM document kind (`text`, `audio`, `interleaved`:
built from the `asr` rows, which carry transcript, speech and word alignments; loss on
every token), or `asr_spans` (ASR of a random 1-4 word span cut out of an `asr` row at its
word alignments: a curriculum that teaches which audio is which word). The mixture gives each source a weight that reads as
*passes over its rows per epoch*: 1.0 uses every row once, 0.25 a seeded quarter of them,
2.5 every row twice plus a seeded half. Epoch e draws with seed (seed, e), so the documents
of any epoch can be rebuilt exactly (resume depends on it).

    caches = TokenCaches.open(input_dir, output_dir)     # token caches of tokenizers/extract.py
    docs = mixture_documents(corpus, renderer, caches, {"asr": 1, "interleaved": 0.5},
                             split="train", epoch=0, seed=0)   # or streamed: mmllm.data.stream
    held_out = eval_documents(corpus, renderer, caches, ["asr", "tts"], per_source=32)

Rows whose audio is missing from the cache (extraction skipped them as bad audio) are
skipped and counted, never silently replaced.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmllm.corpus.reader import load_task
from mmllm.corpus.schema import TASKS
from mmllm.data.augment import AUGMENTED_TASKS, AudioAugment, augmented_lookup
from mmllm.data.cache import CachedSplit, CacheError, MissingCodes, read_cache_card
from mmllm.data.packing import Document
from mmllm.data.stream import MixturePlan
from mmllm.data.templates import LM_DOCUMENTS, TemplateRenderer

ASR_SPANS = "asr_spans"
SOURCES: tuple[str, ...] = (*TASKS, *LM_DOCUMENTS, ASR_SPANS)
WORD_TIMED_SOURCES = ("interleaved", ASR_SPANS)  # cut the input speech at word times
LM_ROWS_TASK = "asr"  # sources that are not tasks are built from these rows (speech + words)
ROW_COLUMNS = ("id", "task", "text", "label", "speaker", "words")  # everything but the audio


@dataclass(frozen=True)
class CacheCard:
    """What a token cache was built with (from its cache.json)."""

    path: Path
    name: str
    num_codebooks: int
    codebook_size: int
    frame_rate_hz: float
    tokenizer_hash: str
    continuous: bool = False  # features [D, F] (num_codebooks = D) instead of codes
    bitrate_bps: float = 0.0
    deduplicated: bool = False  # runs of repeated units collapsed: no time axis
    # SSL layer features: the hidden_states indices whose [D / L] blocks make up D, in order
    feature_layers: tuple[int, ...] = ()
    can_decode: bool = False  # the tokenizer turns codes back into audio by itself

    @classmethod
    def read(cls, path: str | Path) -> CacheCard:
        path = Path(path)
        card = read_cache_card(path)
        props = card["tokenizer_properties"]
        return cls(
            path,
            props["name"],
            props["num_codebooks"],
            props["codebook_size"],
            float(props["frame_rate_hz"]),
            card["tokenizer_hash"],
            bool(props.get("continuous", False)),
            float(props.get("bitrate_bps") or 0.0),
            bool(props.get("deduplicated", False)),
            tuple(props.get("feature_layers", ())),
            bool(props.get("can_decode", False)),
        )


class TokenCaches:
    """The input-audio cache and the output-audio cache (the same one unless they differ)."""

    def __init__(self, input_card: CacheCard, output_card: CacheCard) -> None:
        self.input, self.output = input_card, output_card
        self._splits: dict[tuple[Path, str, str], CachedSplit] = {}

    @classmethod
    def open(cls, input_dir: str | Path, output_dir: str | Path | None = None) -> TokenCaches:
        input_card = CacheCard.read(input_dir)
        output_card = CacheCard.read(output_dir) if output_dir else input_card
        return cls(input_card, output_card)

    def split(self, card: CacheCard, task: str, split: str) -> CachedSplit:
        key = (card.path, task, split)
        if key not in self._splits:
            self._splits[key] = CachedSplit(card.path / task / split)
        return self._splits[key]

    def lookups(self, task: str, split: str):
        """(input lookup, output lookup): key -> codes [K, F] for one task/split."""
        return self.split(self.input, task, split).get, self.split(self.output, task, split).get


def weighted_sources(mixture: dict[str, float], among: tuple[str, ...]) -> list[str]:
    """The sources of `among` that `mixture` gives a positive weight, sorted."""
    return sorted(s for s in among if mixture.get(s, 0) > 0)


def source_dataset(corpus: str | Path, source: str, split: str) -> Any:
    """The rows a source draws from, without audio: a memory-mapped datasets.Dataset."""
    if source not in SOURCES:
        raise ValueError(f"unknown mixture source {source!r}; known: {list(SOURCES)}")
    task = source if source in TASKS else LM_ROWS_TASK
    return load_task(corpus, task)[split].select_columns(list(ROW_COLUMNS))


def source_rows(corpus: str | Path, source: str, split: str) -> list[dict]:
    """The rows (without audio) a source draws from, as dicts (held-out and small uses)."""
    return source_dataset(corpus, source, split).to_list()


def render_row(
    renderer: TemplateRenderer,
    lookups: tuple[Any, Any],
    source: str,
    row: dict,
    row_seed: int | str,
    augment: AudioAugment | None = None,
    codebook_size: int | None = None,
) -> Document:
    """One row of a source rendered to its document (MissingCodes if its audio, or a
    reference, was skipped at extraction); `augment` transforms the input audio of
    text-answer tasks (mmllm.data.augment)."""
    cached_input, output_codes = lookups
    input_codes = cached_input
    if augment is not None and source in AUGMENTED_TASKS:
        input_codes = augmented_lookup(cached_input, augment, row_seed, codebook_size)
    if source == ASR_SPANS:
        rendered = renderer.asr_span(row, input_codes, seed=row_seed)
    elif source in LM_DOCUMENTS:
        rendered = renderer.lm_document(source, row, input_codes, seed=row_seed)
    else:
        rendered = renderer.render(row, input_codes, output_codes)
    return rendered.document(name=f"{source}:{row['id']}", task=source)


def render_source(
    renderer: TemplateRenderer,
    caches: TokenCaches,
    source: str,
    task_rows: list[dict],
    split: str,
    seed: int,
    skipped: Counter,
) -> list[Document]:
    """Render rows of one source to documents, in order (rows without cached codes are
    counted in `skipped`)."""
    task = source if source in TASKS else LM_ROWS_TASK
    lookups = caches.lookups(task, split)
    documents = []
    for row in task_rows:
        try:
            documents.append(render_row(renderer, lookups, source, row, seed))
        except MissingCodes:  # its audio (or a reference) was skipped at extraction
            skipped[source] += 1
    return documents


def row_lookup(cached: CachedSplit, row_index: int, row_id: str) -> Any:
    """The codes lookup (key -> [K, F]) of one corpus row, read by row index: the keys a
    template asks for are the row's id and "<id>#ref<j>"; no key table is built."""

    def get(key: str) -> np.ndarray:
        if key == row_id:
            return cached.get_row(row_index, 0)
        head, _, ref = key.partition("#ref")
        if head != row_id or not ref.isdigit():
            raise KeyError(f"row {row_id!r} has no stream {key!r}")
        return cached.get_row(row_index, int(ref) + 1)

    return get


class DrawRenderer:
    """Renders draws of a `MixturePlan` (mmllm.data.stream): (source index, row, copy)
    rows -> documents, in the draws' order. Rows are read from the memory-mapped corpus
    when asked for, so it holds no rows itself; picklable for DataLoader workers."""

    def __init__(
        self,
        corpus: str | Path,
        renderer: TemplateRenderer,
        caches: TokenCaches,
        sources: list[str],
        split: str = "train",
        seed: int = 0,
        augment: AudioAugment | None = None,
    ) -> None:
        self.corpus, self.renderer, self.caches = corpus, renderer, caches
        self.sources, self.split, self.seed, self.augment = sources, split, seed, augment
        self._datasets: dict[str, Any] = {}

    def row_counts(self) -> dict[str, int]:
        return {s: len(self.dataset(s)) for s in self.sources}

    def dataset(self, source: str) -> Any:
        """The source's rows without audio (datasets.Dataset, memory-mapped), opened once."""
        if source not in self._datasets:
            self._datasets[source] = source_dataset(self.corpus, source, self.split)
        return self._datasets[source]

    def __call__(self, draws: np.ndarray, epoch: int) -> tuple[list[Document], Counter]:
        """draws [N, 3] -> (documents, skipped rows per source)."""
        rows: list[dict | None] = [None] * len(draws)
        for index, source in enumerate(self.sources):
            where = np.flatnonzero(draws[:, 0] == index)
            if len(where):
                columns = self.dataset(source)[draws[where, 1].tolist()]
                for i, position in enumerate(where.tolist()):
                    rows[position] = {name: values[i] for name, values in columns.items()}
        codebook_size = None if self.caches.input.continuous else self.caches.input.codebook_size
        seed = self.seed * 1000 + epoch
        documents, skipped = [], Counter()
        for (index, row_index, copy), row in zip(draws.tolist(), rows, strict=True):
            source = self.sources[index]
            task = source if source in TASKS else LM_ROWS_TASK
            row_seed = seed if copy == 0 else f"{seed}.{copy}"
            lookups = tuple(
                row_lookup(self.caches.split(card, task, self.split), row_index, row["id"])
                for card in (self.caches.input, self.caches.output)
            )
            try:
                documents.append(
                    render_row(
                        self.renderer, lookups, source, row, row_seed, self.augment, codebook_size
                    )
                )
            except MissingCodes:  # its audio (or a reference) was skipped at extraction
                skipped[source] += 1
        return documents, skipped


def mixture_documents(
    corpus: str | Path,
    renderer: TemplateRenderer,
    caches: TokenCaches,
    mixture: dict[str, float],
    split: str = "train",
    epoch: int = 0,
    seed: int = 0,
    augment: AudioAugment | None = None,
) -> tuple[list[Document], Counter]:
    """All documents of one epoch of the mixture, in its seeded shuffled order (input audio
    of text-answer tasks augmented when `augment` is given), rendered at once: for small
    uses and benchmarks; training streams them (mmllm.data.stream).

    Returns (documents, skipped rows per source)."""
    sources = weighted_sources(mixture, SOURCES)
    draw = DrawRenderer(corpus, renderer, caches, sources, split, seed, augment)
    plan = MixturePlan(draw.row_counts(), mixture, seed)
    return draw(plan.epoch_draws(epoch), epoch)


def eval_documents(
    corpus: str | Path,
    renderer: TemplateRenderer,
    caches: TokenCaches,
    sources: list[str],
    split: str = "valid",
    per_source: int = 32,
) -> dict[str, list[Document]]:
    """Held-out documents per source: the first `per_source` rows of `split` (fixed, so
    every evaluation of a run and every run with the same config sees the same ones)."""
    held_out = {}
    skipped: Counter = Counter()
    for source in sources:
        rows = source_rows(corpus, source, split)[:per_source]
        held_out[source] = render_source(renderer, caches, source, rows, split, 0, skipped)
        if not held_out[source]:
            raise CacheError(f"{corpus}: no usable {split} rows for eval source {source!r}")
    return held_out
