"""Everything the main job prepares before its first step, each piece cached on disk:

    corpus       SynthDASB built at `corpus.path` (or an existing corpus directory)
    tokenizers   offline k-means fitted when its centroids are missing; token caches
                 extracted (sharded over the job's processes, resumable)
    text         a SentencePiece vocabulary trained on the corpus (from-scratch models) or
                 the base model's tokenizer
    vocab        MultimodalVocab = text | special tokens | audio blocks of the tokenizers
    documents    the mixture of task rows and LM documents, held-out documents per source

`prepare_run` also runs every check that needs the data before training starts: unknown
tokenizer, a base checkpoint whose vocabulary does not match the token caches, a document
longer than the block.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmllm.config import load_config, save_config
from mmllm.corpus.reader import load_task
from mmllm.corpus.schema import AUDIO_ANSWER_TASKS, TASKS
from mmllm.data.augment import AudioAugment
from mmllm.data.mixture import (
    LM_ROWS_TASK,
    SOURCES,
    WORD_TIMED_SOURCES,
    CacheCard,
    DrawRenderer,
    TokenCaches,
    eval_documents,
    mixture_documents,
    weighted_sources,
)
from mmllm.data.packing import Document, PackedBlock, pack_documents
from mmllm.data.stream import MixturePlan, WindowSource
from mmllm.data.templates import TemplateRenderer
from mmllm.data.vocab import VOCAB_FILENAME, MultimodalVocab, extend_hf_tokenizer
from mmllm.modeling.continuous import feature_statistics
from mmllm.modeling.model import save_pretrained_multimodal
from mmllm.pretrain.build import merged_lora_copy
from mmllm.pretrain.config import ANSWERS_FILENAME, PRETRAIN_CONFIG_FILENAME, PretrainConfig
from mmllm.pretrain.distributed import whole_model_loading
from mmllm.tokenizers.base import TokenizerConfig
from mmllm.tokenizers.portable import package_tokenizer

TEXT_TOKENIZER_DIR = "text_tokenizer"
LABEL_TASKS = ("ks", "ic", "er", "sid")


@dataclass
class PreparedRun:
    cfg: PretrainConfig
    vocab: MultimodalVocab
    hf_tokenizer: Any
    renderer: TemplateRenderer
    caches: TokenCaches
    eval_blocks: dict[str, list[PackedBlock]]
    centroids: dict | None = None
    skipped: Counter = field(default_factory=Counter)
    # continuous input with input_norm corpus: mean, sd [stack * D] of the training rows
    feature_stats: tuple[torch.Tensor, torch.Tensor] | None = None
    answers: dict = field(default_factory=dict)  # `answer_sets`, exported beside the model
    # the resolved tokenizer configs, packaged into every export (mmllm.tokenizers.portable)
    tokenizer_configs: dict[str, TokenizerConfig] = field(default_factory=dict)

    def window_source(self, lanes: int) -> WindowSource:
        """The training blocks' windows (mmllm.data.stream) for `lanes` lanes; their draws
        are rendered by the loader's workers."""
        cfg = self.cfg
        sources = weighted_sources(cfg.data.mixture, SOURCES)
        draw = DrawRenderer(
            cfg.corpus.path, self.renderer, self.caches, sources, "train", cfg.train.seed,
            cfg.data.augment,
        )  # fmt: skip
        plan = MixturePlan(draw.row_counts(), cfg.data.mixture, cfg.train.seed)
        return WindowSource(
            plan, draw, cfg.data.block_size, self.vocab.pad_audio_id, lanes, cfg.data.window
        )

    def train_documents(self, epoch: int) -> list[Document]:
        """One whole epoch of documents at once (benchmarks; training streams them)."""
        documents, _ = mixture_documents(
            self.cfg.corpus.path,
            self.renderer,
            self.caches,
            self.cfg.data.mixture,
            split="train",
            epoch=epoch,
            seed=self.cfg.train.seed,
            augment=self.cfg.data.augment,
        )
        return documents

    def export(self, model: Any, accelerator: Any, directory: Path) -> Path:
        """Save the trained model in HF format (LoRA merged) with the extended tokenizer,
        the vocab, the pretrain config and (continuous / summed input) the projector (for
        summed: the codebook weights; the embeddings it sums are the LLM's), all appearing
        at once. Collective under ZeRO-3: every process calls it."""
        from mmllm.modeling.continuous import ContinuousInputLM, save_projector
        from mmllm.modeling.multicodebook import MultiCodebookLM, save_audio_heads

        accelerator.wait_for_everyone()
        state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 partitions
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            projector, projector_state, streams, heads_state = None, None, None, None
            if isinstance(unwrapped, MultiCodebookLM):  # delay / depth: its heads too
                streams, heads_state = unwrapped, _sub_state(state_dict, "audio_heads.")
            if isinstance(unwrapped, ContinuousInputLM):
                projector, unwrapped = unwrapped.projector, unwrapped.lm
                projector_state = _sub_state(state_dict, "projector.")
                state_dict = _sub_state(state_dict, "lm.")
            if hasattr(unwrapped, "merge_and_unload"):  # peft: fold the adapters in
                with whole_model_loading(accelerator):  # a whole copy, from gathered weights
                    unwrapped, state_dict = merged_lora_copy(unwrapped, state_dict), None
            unwrapped.set_attn_implementation("sdpa")  # loadable without mmllm imported

            def extra(tmp: Path) -> None:
                save_config(self.cfg, tmp, PRETRAIN_CONFIG_FILENAME)
                (tmp / ANSWERS_FILENAME).write_text(json.dumps(self.answers, indent=1))
                for role, tokenizer_cfg in self.tokenizer_configs.items():
                    package_tokenizer(tokenizer_cfg, tmp, role)
                if projector is not None:
                    save_projector(projector, tmp, projector_state)
                if streams is not None:
                    extra = {"frame_fraction": streams.frame_fraction}
                    save_audio_heads(streams.audio_heads, tmp, heads_state, extra)

            save_pretrained_multimodal(
                unwrapped, self.hf_tokenizer, self.vocab, directory, state_dict, extra
            )
        accelerator.wait_for_everyone()
        return directory


def _sub_state(state_dict: dict | None, prefix: str) -> dict | None:
    if state_dict is None:
        return None
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def prepare_corpus(cfg: PretrainConfig, accelerator: Any) -> Path:
    corpus = Path(cfg.corpus.path)
    if cfg.corpus.synth_size:
        from mmllm.synth.build import SynthConfig, build

        synth = cfg.corpus.synth_size
        if synth.endswith((".yaml", ".yml")):  # a synth config file, else a preset name
            synth_cfg = load_config(SynthConfig, synth)
        else:
            synth_cfg = SynthConfig.from_name(synth)
        if accelerator.is_main_process:
            build(synth_cfg, corpus)
        accelerator.wait_for_everyone()
    elif not corpus.is_dir():
        raise FileNotFoundError(
            f"corpus.path: {corpus} does not exist (and corpus.synth_size is unset)"
        )
    return corpus


def prepare_tokens(
    config_path: str, overrides: list[str], cfg: PretrainConfig, corpus: Path, accelerator: Any
) -> tuple[TokenizerConfig, Path]:
    """Load a tokenizer config, fit a k-means tokenizer (offline or SSL) that lacks centroids,
    extract the token cache at <cache_dir>/<name>-<codes hash> (cached). Returns (config,
    cache directory)."""
    import mmllm.tokenizers.backends  # noqa: F401  (fills TOKENIZERS)
    from mmllm.data.cache import extract_corpus, token_cache_dir
    from mmllm.tokenizers.base import TOKENIZERS
    from mmllm.tokenizers.kmeans import CENTROIDS_FILENAME
    from mmllm.tokenizers.registry import build_tokenizer, fit_centroids, has_centroids_to_fit

    tokenizer_cfg = load_config(TokenizerConfig, config_path, overrides)
    if tokenizer_cfg.name not in TOKENIZERS:
        raise ValueError(
            f"{config_path}: unknown tokenizer {tokenizer_cfg.name!r}; known: {sorted(TOKENIZERS)}"
        )
    centroids = Path(tokenizer_cfg.centroids) if tokenizer_cfg.centroids else None
    needs_fit = (
        has_centroids_to_fit(tokenizer_cfg)
        and centroids is not None
        and not (centroids / CENTROIDS_FILENAME).is_file()
    )
    if needs_fit and accelerator.is_main_process:
        fit_centroids(
            tokenizer_cfg, corpus, centroids, max_frames=cfg.tokenizers.fit_max_frames, seed=0
        )
    accelerator.wait_for_everyone()
    build_tokenizer(tokenizer_cfg)  # fails here, naming the problem, rather than mid-extraction
    cache = token_cache_dir(cfg.tokenizers.cache_dir, tokenizer_cfg)
    extract_corpus(tokenizer_cfg, corpus, cache)
    return tokenizer_cfg, cache


def prepare_vocoder(
    cfg: PretrainConfig,
    tokenizer_cfg: TokenizerConfig,
    card: CacheCard,
    corpus: Path,
    accelerator: Any,
) -> TokenizerConfig:
    """The output tokenizer config, with a token vocoder when the run answers in audio and
    its cache's card says the tokenizer cannot decode (no weights are loaded to ask):
    trained on that token cache by the main process (cached at
    <vocoder_dir>/<name>-<hash of the codes and the vocoder config>, resumable) while the
    others wait."""
    import hashlib

    from mmllm.config import config_hash
    from mmllm.corpus.reader import corpus_tasks
    from mmllm.data.cache import codes_hash
    from mmllm.tokenizers.vocoder import VocoderConfig
    from mmllm.vocoder.train import train_vocoder

    section = cfg.tokenizers
    answers_in_audio = any(cfg.data.mixture.get(task, 0) > 0 for task in AUDIO_ANSWER_TASKS)
    if section.vocoder is None or tokenizer_cfg.vocoder or not answers_in_audio:
        return tokenizer_cfg
    if card.can_decode or card.continuous or card.deduplicated:
        return tokenizer_cfg
    vocoder_cfg = load_config(VocoderConfig, section.vocoder, section.vocoder_overrides)
    present = corpus_tasks(corpus, vocoder_cfg.tasks)  # the corpus's tasks among the config's
    vocoder_cfg = replace(vocoder_cfg, tasks=list(present))
    digest = hashlib.sha256(f"{codes_hash(tokenizer_cfg)}:{config_hash(vocoder_cfg)}".encode())
    out = Path(section.vocoder_dir) / f"{tokenizer_cfg.name}-{digest.hexdigest()[:10]}"
    if accelerator.is_main_process:
        train_vocoder(vocoder_cfg, tokenizer_cfg, corpus, card.path, out, other_processes_wait=True)
    accelerator.wait_for_everyone()
    return replace(tokenizer_cfg, vocoder=str(out))


def codebook_vectors(tokenizer: Any) -> list[torch.Tensor]:
    """The k-means centroids of each codebook of a tokenizer, [codebook_size, D] each."""
    centroids = getattr(tokenizer, "centroids", None)
    if centroids is None:
        centroids = getattr(tokenizer, "codebooks", None)
    if centroids is None:
        raise ValueError(
            f"model.init=centroids needs a k-means tokenizer; {tokenizer.name} has no centroids"
        )
    if isinstance(centroids, torch.Tensor) and centroids.ndim == 2:
        return [centroids.float().cpu()]
    return [c.float().cpu() for c in centroids]


def text_tokenizer(cfg: PretrainConfig, corpus: Path, accelerator: Any) -> Any:
    """The base model's tokenizer, or a SentencePiece one trained on the corpus (cached in
    the run directory, so a resumed run reads the same one)."""
    from transformers import AutoTokenizer

    if cfg.model.base is not None:
        return AutoTokenizer.from_pretrained(
            cfg.model.base, trust_remote_code=cfg.model.trust_remote_code
        )
    from mmllm.data.text_tokenizer import synth_texts, train_text_tokenizer

    directory = Path(cfg.run_dir) / TEXT_TOKENIZER_DIR
    if accelerator.is_main_process and not (directory / "tokenizer.json").is_file():
        texts = synth_texts(corpus, columns=("text", "label", "speaker"))
        train_text_tokenizer(texts, directory, vocab_size=cfg.model.text_vocab_size, seed=0)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(directory)


def build_vocab(cfg: PretrainConfig, hf_tokenizer: Any, caches: TokenCaches) -> MultimodalVocab:
    """Text | specials | audio blocks of the caches' tokenizers. A base model that is already
    an mmllm checkpoint keeps its vocab, which must match the caches."""
    cards = [caches.input] if caches.output == caches.input else [caches.input, caches.output]
    cards = [card for card in cards if not card.continuous]  # features are not tokens
    blocks = [(c.name, c.num_codebooks, c.codebook_size) for c in cards]
    base = Path(cfg.model.base) if cfg.model.base else None
    if base is not None and (base / VOCAB_FILENAME).is_file():
        saved = MultimodalVocab.load(base)
        for name, num_codebooks, codebook_size in blocks:
            if name not in saved.blocks:
                raise ValueError(
                    f"vocab mismatch: {base} has audio blocks {saved.tokenizers}, the token cache "
                    f"{cards[0].path.parent / name} is {name!r}"
                )
            block = saved.block(name)
            if (block.num_codebooks, block.codebook_size) != (num_codebooks, codebook_size):
                raise ValueError(
                    f"vocab mismatch: {base} has {name} with {block.num_codebooks} x "
                    f"{block.codebook_size} codes, the token cache has {num_codebooks} x {codebook_size}"
                )
        return saved
    vocab = MultimodalVocab(len(hf_tokenizer), blocks)
    extend_hf_tokenizer(hf_tokenizer, vocab)
    return vocab


STATS_DRAWS = 4096  # documents whose input features give the corpus normalisation
LONGEST_ROWS = 8  # rows per source and measure whose documents the length check renders


def longest_rows(draw: DrawRenderer, caches: TokenCaches) -> np.ndarray:
    """Draws [N, 3] of the rows likely to make each source's longest documents: the
    LONGEST_ROWS rows with the most input frames, the most output frames (a row's streams
    summed) and the longest text. The length check renders these instead of the corpus (the packer still names
    any document that does not fit, should one slip through)."""
    import pyarrow.compute as pc

    picks = []
    for index, source in enumerate(draw.sources):
        task = source if source in TASKS else LM_ROWS_TASK
        table = draw.dataset(source).data
        measures = [pc.utf8_length(pc.fill_null(table.column("text"), "")).to_numpy()]
        for card in {caches.input.path: caches.input, caches.output.path: caches.output}.values():
            entries = caches.split(card, task, "train").entries
            frames = np.zeros(len(table), dtype=np.int64)  # every stream of a row, summed
            np.add.at(frames, entries["row"], entries["frames"])
            measures.append(frames)
        for measure in measures:
            top = np.argsort(-np.asarray(measure), kind="stable")[:LONGEST_ROWS]
            picks += [(index, int(row), 0) for row in top]
    return np.array(sorted(set(picks)), dtype=np.int64).reshape(-1, 3)


def check_lengths(documents: list[Document], block_size: int) -> None:
    longest = max(documents, key=lambda d: len(d.input_ids))
    if len(longest.input_ids) > block_size:
        raise ValueError(
            f"data.block_size {block_size}: document {longest.name!r} has "
            f"{len(longest.input_ids)} tokens; raise data.block_size or drop source "
            f"{longest.task!r} from data.mixture"
        )


def check_word_times(cfg: PretrainConfig, corpus: Path) -> None:
    """Sources cut at word times need a corpus with word alignments (SynthDASB has them;
    LibriSpeech and most public corpora do not): refused naming the key to change."""
    timed = weighted_sources(cfg.data.mixture, WORD_TIMED_SOURCES)
    if not timed:
        return
    rows = load_task(corpus, LM_ROWS_TASK)["train"]
    sample = rows.select(range(min(len(rows), 64)))["words"]
    if not any(sample):
        raise ValueError(
            f"data.mixture: {timed} cut speech at word times, and {corpus}'s {LM_ROWS_TASK} rows "
            f"have no word alignments; give {' and '.join(f'data.mixture.{s}' for s in timed)} "
            "weight 0"
        )


def check_caches_fit(cfg: PretrainConfig, caches: TokenCaches) -> None:
    """The caches can give what audio_input and data.mixture ask of them: codes or
    features as input; a time axis for the sources cut at word times (deduplicated units
    have none); codes a vocoder decodes for audio answers (not features, not deduplicated
    units, whose durations are gone)."""
    if caches.input.continuous != (cfg.audio_input == "continuous"):
        gives, needs = ("features", "codes") if caches.input.continuous else ("codes", "features")
        raise ValueError(
            f"tokenizers.input: {caches.input.name} gives {gives}, but audio_input "
            f"{cfg.audio_input!r} needs {needs}"
        )
    timed = weighted_sources(cfg.data.mixture, WORD_TIMED_SOURCES)
    if caches.input.deduplicated and timed:
        raise ValueError(
            f"tokenizers.input: {caches.input.name} sets `deduplicate`, so its codes have no "
            f"time axis; data.mixture sources {timed} cut speech at word times: drop them"
        )
    answers = weighted_sources(cfg.data.mixture, AUDIO_ANSWER_TASKS)
    if answers and (caches.output.continuous or caches.output.deduplicated):
        why = "gives features" if caches.output.continuous else "sets `deduplicate`"
        raise ValueError(
            f"tokenizers.output: {caches.output.name} {why}; data.mixture sources {answers} "
            f"answer in audio, which needs codes a vocoder decodes: drop them or set "
            f"tokenizers.output to such a tokenizer"
        )


def prepare_run(cfg: PretrainConfig, accelerator: Any) -> PreparedRun:
    """Data, tokenizers, vocab and held-out blocks of a run, after every check passed."""
    from mmllm.tokenizers.registry import build_tokenizer

    corpus = prepare_corpus(cfg, accelerator)
    check_word_times(cfg, corpus)
    input_cfg, input_cache = prepare_tokens(
        cfg.tokenizers.input, cfg.tokenizers.input_overrides, cfg, corpus, accelerator
    )
    output_cfg, output_cache = input_cfg, input_cache
    if cfg.tokenizers.output:
        output_cfg, output_cache = prepare_tokens(
            cfg.tokenizers.output, cfg.tokenizers.output_overrides, cfg, corpus, accelerator
        )
        if output_cfg.name == input_cfg.name and output_cache != input_cache:
            raise ValueError(
                f"tokenizers.input and tokenizers.output are two variants of {input_cfg.name} "
                f"(caches {input_cache.name} and {output_cache.name}) whose tokens would share "
                f"names in the vocab: use one config for both, or two tokenizers"
            )
    caches = TokenCaches.open(input_cache, output_cache)
    check_caches_fit(cfg, caches)
    output_cfg = prepare_vocoder(cfg, output_cfg, caches.output, corpus, accelerator)
    hf_tokenizer = text_tokenizer(cfg, corpus, accelerator)
    vocab = build_vocab(cfg, hf_tokenizer, caches)
    renderer = TemplateRenderer(
        vocab,
        hf_tokenizer,
        caches.input.name,
        caches.output.name,
        pattern=cfg.data.pattern,
        frame_rate_hz=caches.input.frame_rate_hz,
        audio_input=cfg.audio_input,
        feature_stack=cfg.continuous.stack,
    )
    centroids = None
    if cfg.model.init == "centroids":
        centroids = {}
        for tokenizer_cfg in {input_cfg.name: input_cfg, output_cfg.name: output_cfg}.values():
            for k, vectors in enumerate(codebook_vectors(build_tokenizer(tokenizer_cfg))):
                centroids[(tokenizer_cfg.name, k)] = vectors
    sources = [s for s in SOURCES if cfg.data.mixture.get(s, 0) > 0]
    held_out = eval_documents(
        corpus, renderer, caches, sources, split="valid", per_source=cfg.data.eval_per_source
    )
    longest = cfg.data.augment  # the slowest speed warp makes the longest documents
    if longest is not None:
        longest = AudioAugment(speed=[longest.speed[0]] * 2)
    draw = DrawRenderer(corpus, renderer, caches, sources, "train", cfg.train.seed, longest)
    candidates, skipped = draw(longest_rows(draw, caches), 0)
    check_lengths(candidates + [d for docs in held_out.values() for d in docs], cfg.data.block_size)
    if skipped:
        accelerator.print(f"rows without cached audio, skipped: {dict(skipped)}")
    feature_stats = None
    if cfg.audio_input == "continuous" and cfg.continuous.input_norm == "corpus":
        # a bounded sample: the first STATS_DRAWS draws of epoch 0 (at the slowest warp)
        plan = MixturePlan(draw.row_counts(), cfg.data.mixture, cfg.train.seed)
        sample, _ = draw(plan.epoch_draws(0)[:STATS_DRAWS], 0)
        feature_stats = feature_statistics([d.features for d in sample if d.features is not None])
    eval_blocks = {
        source: list(pack_documents(docs, cfg.data.block_size, vocab.pad_audio_id))
        for source, docs in held_out.items()
    }
    return PreparedRun(
        cfg,
        vocab,
        hf_tokenizer,
        renderer,
        caches,
        eval_blocks,
        centroids,
        skipped,
        feature_stats,
        answer_sets(corpus, sources),
        {"input": input_cfg, "output": output_cfg},
    )


def answer_sets(corpus: Path, sources: list[str]) -> dict:
    """What a run trains the model to answer, for the prompting CLI to check requests
    against: {"labels": {task: the training rows' labels}, "tts_speakers": [...]}."""
    labels = {
        task: sorted(load_task(corpus, task)["train"].unique("label"))
        for task in LABEL_TASKS
        if task in sources
    }
    speakers = (
        sorted(load_task(corpus, "tts")["train"].unique("speaker")) if "tts" in sources else []
    )
    return {"labels": labels, "tts_speakers": speakers}
