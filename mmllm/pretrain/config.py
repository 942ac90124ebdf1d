"""The config of the main job, `train/pretrain.py`: one dataclass per section.

    cfg = load_config(PretrainConfig, "configs/pretrain/default.yaml", ["train.steps=10"])

Every default here is the embedded default (SynthDASB small, mfcc-kmeans, a 4M-parameter
Llama from scratch), so `PretrainConfig()` is the run `accelerate launch train/pretrain.py`
does with no arguments. `configs/pretrain/*.yaml` override what they name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from mmllm.config import OMIT_WHEN_NONE, config_dataclass, config_hash, from_dict, read_yaml
from mmllm.corpus.schema import AUDIO_ANSWER_TASKS
from mmllm.data.augment import AudioAugment

PRECISIONS = ("auto", "fp32", "bf16")


PRETRAIN_CONFIG_FILENAME = "mmllm_pretrain.yaml"  # a run's resolved config, in every checkpoint
ANSWERS_FILENAME = "mmllm_answers.json"  # what a run trained to answer, in every export


AUDIO_INPUTS = ("discrete", "continuous", "summed")


@config_dataclass
class CorpusSection:
    """path:        a SynthDASB-layout directory (one DatasetDict per task)
    synth_size:  build SynthDASB at `path` when it is missing: a preset (tiny, small, full)
                 or a synth config file (configs/synth/*.yaml); null: `path` must already
                 exist (real corpora, mmllm.corpora.convert)"""

    path: str = "data/synthdasb-small-grid"
    synth_size: str | None = "configs/synth/small-grid.yaml"


@config_dataclass
class TokenizerSection:
    """input:            tokenizer config (YAML) for audio the model reads
    input_overrides:  dotted overrides of that config, e.g. ["codebook_size=64"]
    output:           tokenizer config for audio it writes (TTS, SE, SS); null = `input`
    cache_dir:        token caches at <cache_dir>/<tokenizer name>-<codes hash> (built when missing)
    fit_max_frames:   frames sampled to fit a k-means tokenizer that has no centroids
    vocoder:          token vocoder config (YAML, configs/vocoder/) trained for the output
                      tokens when their tokenizer cannot decode audio itself (mfcc-kmeans,
                      SSL k-means) and the mixture has audio answers (TTS, SE, SS): trained
                      once at <vocoder_dir>/<tokenizer name>-<hash>, packaged with the
                      checkpoint; null = none (audio answers stay codes)
    vocoder_overrides: dotted overrides of that config, e.g. ["steps=1500"]"""

    input: str = "configs/tokenizers/mfcc-kmeans-deltas.yaml"
    input_overrides: list[str] = dataclasses.field(default_factory=list)
    output: str | None = None
    output_overrides: list[str] = dataclasses.field(default_factory=list)
    cache_dir: str = "data/tokens"
    fit_max_frames: int = 500_000
    vocoder: str | None = "configs/vocoder/mfcc-kmeans-main-job.yaml"
    vocoder_overrides: list[str] = dataclasses.field(default_factory=list)
    vocoder_dir: str = "runs/vocoders"


@config_dataclass
class LoraSection:
    """LoRA adapters (peft) on `target_modules`; the special and audio rows of the input
    embeddings and output layer are trained in full (peft trainable_token_indices)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@config_dataclass
class DepthSection:
    """The depth transformer of `data.pattern: depth` (mmllm.modeling.multicodebook): its
    width, layers and attention heads; `frame_fraction` of the target frames train it in
    each batch (Sesame CSM trains its decoder on 1/16 of the frames to save compute)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    frame_fraction: float = 1.0


@config_dataclass
class ModelSection:
    """base:        hub id or local directory of a causal LM (or an mmllm checkpoint) to
                 extend; null = a Llama built from scratch with the sizes below and a
                 SentencePiece text vocabulary of `text_vocab_size` pieces trained on the corpus
    init:        new (special + audio) rows: mean | random | centroids (k-means tokenizers)
    audio_input_rms: the audio rows of the input embeddings drawn from N(0, rms^2) after
                 `init` (mmllm.modeling.model.resize_model); null = they keep `init`; auto = 1.0 for
                 a from-scratch model (base null, init not centroids: audio rows at the
                 text rows' 0.02 wash out in the residual stream), null for a pretrained base
    freeze_audio: keep the audio rows at their initial values
    depth:       the depth transformer of `data.pattern: depth` (DepthSection)
    """

    base: str | None = None
    trust_remote_code: bool = False
    text_vocab_size: int = 1024
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 704
    init: str = "mean"
    audio_input_rms: float | Literal["auto"] | None = "auto"
    freeze_audio: bool = False
    gradient_checkpointing: bool = False
    lora: LoraSection | None = None
    depth: DepthSection = dataclasses.field(default_factory=DepthSection)

    def resolved_audio_input_rms(self) -> float | None:
        """The scale the audio input rows are drawn at, `auto` resolved; None: they keep `init`."""
        if self.audio_input_rms != "auto":
            return self.audio_input_rms
        return 1.0 if self.base is None and self.init != "centroids" else None


def _default_mixture() -> dict[str, float]:
    # every task row once per epoch; LM documents from the asr rows: speech-only and
    # interleaved at half a pass, text-only at a quarter (text is cheap to learn)
    # (asr_spans, the word-span curriculum, is opt-in: the comparison configs use it)
    from mmllm.data.mixture import SOURCES  # here: reading a config needs no data code

    mixture = {source: 1.0 for source in SOURCES if source != "asr_spans"}
    mixture.update(audio=0.5, interleaved=0.5, text=0.25)
    return mixture


@config_dataclass
class DataSection:
    """pattern:          codebook layout of audio spans (mmllm.data.patterns): flatten (K tokens
                      per frame) | first (codebook 0) | delay (MusicGen: K ids per step,
                      codebook k k steps late, K heads) | depth (Moshi / CSM: a frame per
                      step, a depth transformer writes codebooks 1..K-1; `model.depth`)
    block_size:       tokens per packed block; the longest document must fit
    mixture:          source -> passes over its rows per epoch (mmllm.data.mixture)
    eval_per_source:  held-out documents (valid split) per source for the eval loss
    augment:          seeded speed warp + time masks of the input audio of text-answer tasks
                      (mmllm.data.augment), e.g. {speed: [0.9, 1.1], mask_ratio: 0.1}; null = off
    lanes:            block streams a step draws from equally (mmllm.data.stream); each process
                      renders its own lanes. null = one per process; a fixed number gives the
                      same global batches for every process count that divides it
    window:           documents rendered, packed and shuffled together (the packing window)
    workers:          DataLoader worker processes rendering windows, per training process
                      (0: in the training process); changes speed only"""

    pattern: str = "flatten"
    block_size: int = 1024
    mixture: dict[str, float] = dataclasses.field(default_factory=_default_mixture)
    eval_per_source: int = 32
    augment: AudioAugment | None = dataclasses.field(default=None, metadata=OMIT_WHEN_NONE)
    lanes: int | None = None
    window: int = 2048
    workers: int = 1


@config_dataclass
class OptimSection:
    """AdamW, linear warmup then cosine decay to `min_lr_ratio * lr`. Embeddings, norms and
    biases get no weight decay (frozen audio rows stay put only without decay).
    `mixing_lr_scale` multiplies `lr` for the softmax mixing weights of the input (summed
    input's per-codebook weights, SSL layer features' per-layer weights): Adam moves a
    parameter by about `lr` per step whatever its gradient's size, so at lr 3e-3 a mixing
    logit moves ~1.5 in 500 steps and the weights stay near uniform."""

    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    mixing_lr_scale: float = 1.0


@config_dataclass
class TrainSection:
    """steps:             optimizer steps
    micro_batch_size:  packed blocks per process per forward
    grad_accum:        forwards per optimizer step (global batch = micro x accum x processes)
    deepspeed:         DeepSpeed JSON config used when the launcher did not set one; null =
                       plain DDP (the only multi-process option on CPU)
    precision:         auto = bf16 on GPU, fp32 on CPU (bf16 matmul is ~200x slower there)
    checkpoint_every:  steps between checkpoints (0: only the final export)
    attention:         packed = each document's own causal attention, documents repadded into
                       one SDPA call (mmllm.modeling.attention); flex = FlexAttention with a
                       document block mask (CUDA); mask = SDPA over the whole block with a 4D
                       block-diagonal mask
    cpu_threads:       torch threads per process on CPU; null = the cores / local processes
                       (`accelerate launch` alone would leave every process 1 thread)"""

    steps: int = 360
    micro_batch_size: int = 4
    grad_accum: int = 2
    seed: int = 0
    deepspeed: str | None = "configs/deepspeed/zero2.json"
    precision: str = "auto"
    log_every: int = 10
    eval_every: int = 80
    checkpoint_every: int = 80
    keep_checkpoints: int = 2
    attention: str = "packed"
    cpu_threads: int | None = None


@config_dataclass
class ContinuousSection:
    """Continuous-input baseline (`audio_input: continuous`): the input tokenizer config names
    a feature backend (mfcc-features, log-mel-features); `stack` consecutive frames are
    concatenated (frame rate / stack), then an MLP of width `projector_hidden` maps them to
    the model width (mmllm.modeling.continuous). `input_norm`: `corpus` standardises each input with
    the mean / sd of the training rows (the corpus statistics mfcc-kmeans quantises with;
    they keep speaker offsets), `layer` a LayerNorm over each frame. `output_rms`: the
    projector's last layer is scaled at init so normalised frames come out at this
    root-mean-square (null: PyTorch's default init). Summed input uses none of these."""

    stack: int = 1
    projector_hidden: int = 512
    input_norm: str = "corpus"
    output_rms: float | None = 1.0


@config_dataclass
class PretrainConfig:
    """audio_input: how input audio enters the LLM (audio answers are always tokens):
    discrete    input audio spans are tokens laid out by `data.pattern` (flatten: K per frame)
    continuous  one position per (stacked) feature frame of a feature tokenizer, its
                embedding projected from the features (`continuous`; answers are tokens
                of `tokenizers.output`)
    summed      one position per frame of a code tokenizer, its embedding the
                softmax(w)-weighted sum of the LLM's own embeddings of the frame's K
                codes, w [K] learned (DASB's input for multi-codebook tokens; K = 1 is
                the same as discrete). mmllm.modeling.continuous"""

    run_dir: str = "runs/pretrain/default"
    audio_input: str = "discrete"
    continuous: ContinuousSection = dataclasses.field(default_factory=ContinuousSection)
    corpus: CorpusSection = dataclasses.field(default_factory=CorpusSection)
    tokenizers: TokenizerSection = dataclasses.field(default_factory=TokenizerSection)
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)


# Keys whose default changed after runs were saved, with the value such a run had: a saved
# run config that lacks the key predates it (it was left out while null) and is read with
# that value, not with today's default.
_SAVED_BEFORE_KEY = {("model", "audio_input_rms"): None}


def load_run_config(path: str | Path) -> PretrainConfig:
    """The PretrainConfig a run saved beside its checkpoints (mmllm_pretrain.yaml), read as
    that run was trained: keys added later with a non-null default keep their old value."""
    data = read_yaml(path)
    for (section, key), value in _SAVED_BEFORE_KEY.items():
        if isinstance(data.get(section, {}), dict):
            data.setdefault(section, {}).setdefault(key, value)
    return from_dict(PretrainConfig, data, source=str(path))


def resume_identity(cfg: PretrainConfig, num_processes: int) -> dict:
    """What a run directory's later starts must share with its first (checked by
    `mmllm.training.checkpoints.check_run`): the config's hash without the keys that change
    neither the data nor the model (train.steps, so a finished run can train longer, eval,
    log and checkpoint intervals, CPU threads, loader workers), and the number of processes (the global batch
    order is laid out per process)."""
    free = {"steps": 1, "eval_every": 0, "log_every": 1, "checkpoint_every": 0}
    free |= {"keep_checkpoints": 0, "cpu_threads": None}
    fixed = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, **free),
        data=dataclasses.replace(cfg.data, workers=1),
    )
    return {"config_hash": config_hash(fixed), "num_processes": num_processes}


def check_pretrain_config(cfg: PretrainConfig) -> None:
    """Checks that need no files; raises ValueError naming the key."""
    # imported here, not with the config: reading a config must not load torch and the stack
    from mmllm.data.mixture import SOURCES, weighted_sources
    from mmllm.data.patterns import MULTI_STREAM, PATTERNS
    from mmllm.modeling.continuous import INPUT_NORMS
    from mmllm.modeling.model import INIT_MODES

    problems = []
    unknown = sorted(set(cfg.data.mixture) - set(SOURCES))
    if unknown:
        problems.append(f"data.mixture: unknown source(s) {unknown}; known: {list(SOURCES)}")
    if not any(weight > 0 for weight in cfg.data.mixture.values()):
        problems.append("data.mixture: every weight is 0; nothing to train on")
    negative = sorted(name for name, weight in cfg.data.mixture.items() if weight < 0)
    if negative:
        problems.append(f"data.mixture: negative weight for {negative}")
    if cfg.data.pattern not in PATTERNS:
        problems.append(f"data.pattern: {cfg.data.pattern!r}; expected one of {PATTERNS}")
    if cfg.data.pattern in MULTI_STREAM and cfg.audio_input == "continuous":
        problems.append(
            f"data.pattern: {cfg.data.pattern!r} writes audio answers as rows of codes, "
            "which continuous input's feature rows cannot share a batch with; use "
            "audio_input discrete or summed"
        )
    depth = cfg.model.depth
    if depth.hidden_size % max(depth.num_heads, 1) or depth.num_layers < 1 or depth.num_heads < 1:
        problems.append(
            f"model.depth: hidden_size {depth.hidden_size} must be a multiple of num_heads "
            f"{depth.num_heads}, num_layers and num_heads >= 1"
        )
    if not 0 < depth.frame_fraction <= 1:
        problems.append(
            f"model.depth.frame_fraction: must be in (0, 1], got {depth.frame_fraction}"
        )
    if cfg.model.init not in INIT_MODES:
        problems.append(f"model.init: {cfg.model.init!r}; expected one of {INIT_MODES}")
    rms = cfg.model.audio_input_rms
    if rms not in (None, "auto") and (rms <= 0 or cfg.model.init == "centroids"):
        problems.append(
            f"model.audio_input_rms: {rms}; must be > 0, and not with model.init centroids "
            "(it would overwrite the centroid rows)"
        )
    if cfg.train.precision not in PRECISIONS:
        problems.append(f"train.precision: {cfg.train.precision!r}; expected one of {PRECISIONS}")
    if cfg.audio_input not in AUDIO_INPUTS:
        problems.append(f"audio_input: {cfg.audio_input!r}; expected one of {AUDIO_INPUTS}")
    if cfg.audio_input in ("continuous", "summed"):
        lm_audio = weighted_sources(cfg.data.mixture, ("audio", "interleaved"))
        if lm_audio:
            problems.append(
                f"data.mixture: {lm_audio} predict input audio as tokens, which "
                f"{cfg.audio_input} input does not have; give them weight 0"
            )
    if cfg.audio_input == "continuous":
        speaking = weighted_sources(cfg.data.mixture, AUDIO_ANSWER_TASKS)
        if speaking and not cfg.tokenizers.output:
            problems.append(
                f"tokenizers.output: audio answers ({speaking}) need a discrete output "
                "tokenizer when audio_input is continuous"
            )
        if cfg.continuous.stack < 1:
            problems.append(f"continuous.stack: must be >= 1, got {cfg.continuous.stack}")
        if cfg.continuous.output_rms is not None and cfg.continuous.output_rms <= 0:
            problems.append(
                f"continuous.output_rms: must be > 0 or null, got {cfg.continuous.output_rms}"
            )
        if cfg.continuous.input_norm not in INPUT_NORMS:
            problems.append(
                f"continuous.input_norm: must be one of {list(INPUT_NORMS)}, "
                f"got {cfg.continuous.input_norm!r}"
            )
    if cfg.train.attention not in ("packed", "flex", "mask"):
        problems.append(
            f"train.attention: {cfg.train.attention!r}; expected 'packed', 'flex' or 'mask'"
        )
    if cfg.data.lanes is not None and cfg.data.lanes < 1:
        problems.append(f"data.lanes: must be >= 1 or null, got {cfg.data.lanes}")
    if cfg.data.window < 1 or cfg.data.workers < 0:
        problems.append(
            f"data.window must be >= 1 and data.workers >= 0, got {cfg.data.window}, "
            f"{cfg.data.workers}"
        )
    for key in ("steps", "micro_batch_size", "grad_accum", "log_every"):
        if getattr(cfg.train, key) < 1:
            problems.append(f"train.{key}: must be >= 1, got {getattr(cfg.train, key)}")
    optim = cfg.optim
    if optim.lr <= 0 or optim.mixing_lr_scale <= 0:
        problems.append(
            f"optim.lr and optim.mixing_lr_scale: must be > 0, got {optim.lr}, "
            f"{optim.mixing_lr_scale}"
        )
    if not 0 <= optim.min_lr_ratio <= 1 or optim.warmup_steps < 0 or optim.weight_decay < 0:
        problems.append(
            "optim: min_lr_ratio must be in [0, 1], warmup_steps and weight_decay >= 0 "
            f"(got {optim.min_lr_ratio}, {optim.warmup_steps}, {optim.weight_decay})"
        )
    if not (0 <= optim.beta1 < 1 and 0 <= optim.beta2 < 1) or optim.grad_clip < 0:
        problems.append(
            f"optim: beta1 and beta2 must be in [0, 1), grad_clip >= 0 (got {optim.beta1}, "
            f"{optim.beta2}, {optim.grad_clip})"
        )
    if cfg.data.block_size < 8:
        problems.append(f"data.block_size: must be >= 8, got {cfg.data.block_size}")
    if cfg.model.hidden_size % cfg.model.num_heads:
        problems.append(
            f"model.hidden_size {cfg.model.hidden_size} is not a multiple of model.num_heads "
            f"{cfg.model.num_heads}"
        )
    if problems:
        raise ValueError("bad pretrain config:\n  " + "\n  ".join(problems))
