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
                             split="train", epoch=0, seed=0)
    held_out = eval_documents(corpus, renderer, caches, ["asr", "tts"], per_source=32)

Rows whose audio is missing from the cache (extraction skipped them as bad audio) are
skipped and counted, never silently replaced.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mmllm.corpus.reader import load_task
from mmllm.corpus.schema import TASKS
from mmllm.data.augment import AUGMENTED_TASKS, AudioAugment, augmented_lookup
from mmllm.data.cache import CachedSplit, CacheError, MissingCodes, read_cache_card
from mmllm.data.packing import Document
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

    def _split(self, card: CacheCard, task: str, split: str) -> CachedSplit:
        key = (card.path, task, split)
        if key not in self._splits:
            self._splits[key] = CachedSplit(card.path / task / split)
        return self._splits[key]

    def lookups(self, task: str, split: str):
        """(input lookup, output lookup): key -> codes [K, F] for one task/split."""
        return self._split(self.input, task, split).get, self._split(self.output, task, split).get


def weighted_sources(mixture: dict[str, float], among: tuple[str, ...]) -> list[str]:
    """The sources of `among` that `mixture` gives a positive weight, sorted."""
    return sorted(s for s in among if mixture.get(s, 0) > 0)


def source_rows(corpus: str | Path, source: str, split: str) -> list[dict]:
    """The rows (without audio) a source draws from."""
    if source not in SOURCES:
        raise ValueError(f"unknown mixture source {source!r}; known: {list(SOURCES)}")
    task = source if source in TASKS else LM_ROWS_TASK
    dataset = load_task(corpus, task)[split]
    return dataset.select_columns(list(ROW_COLUMNS)).to_list()


def draw_rows(num_rows: int, weight: float, rng: random.Random) -> list[int]:
    """Row indices for one epoch: floor(weight) full passes + a seeded fraction of a pass."""
    if weight < 0:
        raise ValueError(f"mixture weight must be >= 0, got {weight}")
    whole, fraction = divmod(weight, 1.0)
    indices = list(range(num_rows)) * int(whole)
    indices += sorted(rng.sample(range(num_rows), round(fraction * num_rows)))
    return indices


def render_source(
    renderer: TemplateRenderer,
    caches: TokenCaches,
    source: str,
    task_rows: list[dict],
    split: str,
    seed: int,
    skipped: Counter,
    augment: AudioAugment | None = None,
) -> list[Document]:
    """Render rows of one source to documents (rows without cached codes are counted);
    `augment` transforms the input audio of text-answer tasks (mmllm.data.augment)."""
    task = source if source in TASKS else LM_ROWS_TASK
    cached_input, output_codes = caches.lookups(task, split)
    documents = []
    codebook_size = None if caches.input.continuous else caches.input.codebook_size
    copies: Counter = Counter()  # a row drawn twice in an epoch gets a different crop/layout
    for row in task_rows:
        copy = copies[row["id"]]
        copies[row["id"]] += 1
        row_seed = seed if copy == 0 else f"{seed}.{copy}"
        input_codes = cached_input
        if augment is not None and source in AUGMENTED_TASKS:
            input_codes = augmented_lookup(cached_input, augment, row_seed, codebook_size)
        try:
            if source == ASR_SPANS:
                rendered = renderer.asr_span(row, input_codes, seed=row_seed)
            elif source in LM_DOCUMENTS:
                rendered = renderer.lm_document(source, row, input_codes, seed=row_seed)
            else:
                rendered = renderer.render(row, input_codes, output_codes)
        except MissingCodes:  # its audio (or a reference) was skipped at extraction
            skipped[source] += 1
            continue
        documents.append(rendered.document(name=f"{source}:{row['id']}", task=source))
    return documents


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
    """All documents of one epoch of the mixture, in a seeded shuffled order (input audio
    of text-answer tasks augmented when `augment` is given).

    Returns (documents, skipped rows per source)."""
    rng = random.Random(f"mixture-{seed}-{epoch}")
    documents: list[Document] = []
    skipped: Counter = Counter()
    for source in sorted(mixture):
        weight = mixture[source]
        if weight == 0:
            continue
        rows = source_rows(corpus, source, split)
        chosen = [rows[i] for i in draw_rows(len(rows), weight, rng)]
        documents += render_source(
            renderer,
            caches,
            source,
            chosen,
            split,
            seed=seed * 1000 + epoch,
            skipped=skipped,
            augment=augment,
        )
    rng.shuffle(documents)
    return documents, skipped


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
