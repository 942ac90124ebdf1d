"""What the training loop (`train/pretrain.py`) needs and nothing else: model building,
LoRA, the optimizer and LR schedule, DeepSpeed settings, the step-by-step block schedule,
the token loss, evaluation and atomic checkpoints.

Loss normalisation (why the loop's numbers match across setups): an optimizer step's loss
is the sum of token losses over the *global* batch (all processes, all accumulation
micro-batches) divided by its number of target tokens. Every process can count those
targets without communication, because every process knows the whole step's blocks
(`BlockSchedule.step_blocks`). 1 process and N processes on the same global batch then get
the same loss and the same gradient (tested), whatever the padding per micro-batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmllm.attention import PACKED_ATTENTION, document_spans
from mmllm.data.packing import (
    IGNORE_INDEX,
    Document,
    PackedBlock,
    block_attention_mask,
    collate_blocks,
    pack_documents,
)
from mmllm.fileio import LATEST, atomic_write_text, publish_checkpoint, read_latest, step_dir
from mmllm.model import resize_model
from mmllm.pretrain_config import (
    ContinuousSection,
    LoraSection,
    ModelSection,
    OptimSection,
    TrainSection,
)
from mmllm.vocab import MultimodalVocab

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"


# ---------------------------------------------------------------- model


def build_model(
    section: ModelSection,
    vocab: MultimodalVocab,
    max_positions: int,
    seed: int,
    centroids: dict | None = None,
    packed_attention: bool = True,
) -> Any:
    """A causal LM with `vocab.size` rows: a Llama from scratch (`section.base` unset) or
    `section.base` loaded and resized, new rows initialised as `section.init` says;
    attention per document (`mmllm.attention`) unless `packed_attention` is False."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if section.base is None:
        config = LlamaConfig(
            vocab_size=vocab.text_size,
            hidden_size=section.hidden_size,
            intermediate_size=section.intermediate_size,
            num_hidden_layers=section.num_layers,
            num_attention_heads=section.num_heads,
            num_key_value_heads=section.num_heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            section.base, trust_remote_code=section.trust_remote_code
        )
    if model.get_input_embeddings().weight.shape[0] != vocab.size:
        resize_model(
            model,
            vocab,
            init=section.init,
            centroids=centroids,
            freeze_new=False,
            seed=seed,
            audio_input_rms=section.resolved_audio_input_rms(),
        )
    if section.freeze_audio and section.lora is None:
        from mmllm.model import freeze_audio_rows

        freeze_audio_rows(model, vocab)
    if packed_attention:
        model.set_attn_implementation(PACKED_ATTENTION)
    if section.gradient_checkpointing:
        # transformers renamed it (the old name warns and goes in v6); older 5.x lack the new
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
        model.config.use_cache = False
    return model


def wrap_audio_input(
    model: Any,
    vocab: MultimodalVocab,
    audio_input: str,
    num_codebooks: int,
    continuous: ContinuousSection,
    feature_layers: Sequence[int] = (),
    feature_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Any:
    """`model` as is for discrete input; else <|audio_embed|> positions take projected
    features (continuous: `num_codebooks` = the feature dimension D; with `feature_layers`,
    D holds one block per SSL layer and the projector learns their weighted sum) or the
    softmax-weighted sum of the frame's `num_codebooks` code embeddings (summed).
    `feature_stats` (mean, sd [stack * D] of the training rows) are what the projector
    standardises with under `continuous.input_norm: corpus`; `continuous.output_rms` scales
    its last layer at initialisation. See mmllm.continuous."""
    from mmllm.continuous import AudioProjector, CodebookSum, ContinuousInputLM

    if audio_input == "discrete":
        return model
    embedding = model.get_input_embeddings()
    if audio_input == "summed":
        projector = CodebookSum(num_codebooks, embedding)
    else:
        width = embedding.weight.shape[1]
        stacked = num_codebooks * continuous.stack
        layers = list(feature_layers) or None
        layer_dim = num_codebooks // len(layers) if layers else None
        projector = AudioProjector(
            stacked,
            width,
            continuous.projector_hidden,
            layers=layers,
            layer_dim=layer_dim,
            input_norm=continuous.input_norm,
        )
        if continuous.input_norm == "corpus":
            if feature_stats is None:
                raise ValueError("continuous.input_norm corpus needs the training rows' statistics")
            projector.set_feature_statistics(*feature_stats)
        if continuous.output_rms is not None:
            projector.match_output_scale(continuous.output_rms)
    return ContinuousInputLM(model, projector, vocab.audio_embed_id)


def _module_name(model: Any, module: Any) -> str:
    return next(name for name, m in model.named_modules() if m is module).rsplit(".", 1)[-1]


def apply_lora(model: Any, lora: LoraSection, vocab: MultimodalVocab, freeze_audio: bool) -> Any:
    """peft LoRA on `lora.target_modules`; the new rows of the input embeddings and (untied)
    output layer are trained in full through peft's trainable_token_indices. Frozen audio
    rows (`freeze_audio`) leave only the special rows trainable."""
    from peft import LoraConfig, get_peft_model

    stop = vocab.audio_start if freeze_audio else vocab.size
    rows = list(range(vocab.text_size, stop))
    tokens = {_module_name(model, model.get_input_embeddings()): rows}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        tokens[_module_name(model, output)] = rows
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        trainable_token_indices=tokens,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def mixing_weights(model: Any) -> list[torch.nn.Parameter]:
    """The input's softmax mixing logits: CodebookSum.weights [K] and
    AudioProjector.layer_weights [L] (empty for a plain LM or a projector without layers)."""
    from mmllm.continuous import AudioProjector, CodebookSum

    found = []
    for module in model.modules():
        if isinstance(module, CodebookSum):
            found.append(module.weights)
        elif (
            isinstance(module, AudioProjector)
            and getattr(module, "layer_weights", None) is not None
        ):
            found.append(module.layer_weights)
    return found


def make_optimizer(model: Any, optim: OptimSection) -> torch.optim.Optimizer:
    """AdamW; weight decay only on 2D weights that are not embeddings or the output layer
    (decay would shrink frozen rows, and it hurts rare tokens' rows). The input's mixing
    weights get their own group at `mixing_lr_scale * lr`, without decay."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    no_decay = {id(base.get_input_embeddings().weight)}
    if base.get_output_embeddings() is not None:
        no_decay.add(id(base.get_output_embeddings().weight))
    mixing = {id(param) for param in mixing_weights(model)}
    decay, other, mixed = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in mixing:
            mixed.append(param)
        elif param.ndim >= 2 and id(param) not in no_decay:
            decay.append(param)
        else:
            other.append(param)
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    if mixed:
        groups.append(
            {"params": mixed, "weight_decay": 0.0, "lr": optim.lr * optim.mixing_lr_scale}
        )
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2))


def lr_multiplier(step: int, optim: OptimSection, total_steps: int) -> float:
    """Linear warmup over `warmup_steps`, then cosine from 1 to `min_lr_ratio` at the end
    (0-based `step`; `optim` is any config with warmup_steps and min_lr_ratio: the
    pretraining OptimSection, the VocoderConfig)."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    span = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * cosine


# ---------------------------------------------------------------- launching


def deepspeed_config(path: str | Path, train: TrainSection, grad_clip: float, bf16: bool) -> dict:
    """Read a DeepSpeed JSON config and fill its "auto" values from the pretrain config;
    a value set in the file that disagrees with the pretrain config is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DeepSpeed config not found (train.deepspeed)")
    ds = json.loads(path.read_text())
    wanted = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": grad_clip,
    }
    for key, value in wanted.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ValueError(
                f'{path}: {key} is {ds[key]} but the pretrain config gives {value}; set it to "auto"'
            )
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above
    ds["bf16"] = {"enabled": bf16}
    ds["fp16"] = {"enabled": False}
    ds.setdefault("steps_per_print", 10**9)  # the loop logs; DeepSpeed's own prints are noise
    return ds


def deepspeed_config_path(train: TrainSection) -> str | None:
    """The DeepSpeed config to use: the launcher's (`accelerate launch --use_deepspeed ...` or
    an accelerate config file with DeepSpeed) wins over `train.deepspeed`."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
            return os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"]
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        return f"configs/deepspeed/zero{stage}.json"
    return train.deepspeed


def prepare_deepspeed_environment() -> None:
    """Make DeepSpeed start in this process. Under a bare `accelerate launch` (one process)
    nothing sets RANK / MASTER_ADDR, and DeepSpeed then looks for MPI (mpi4py, absent);
    giving it a one-process world avoids that."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"


# ---------------------------------------------------------------- data schedule


class BlockSchedule:
    """The packed blocks of every optimizer step, epoch after epoch, identical on every
    process and on every rerun (resume rebuilds them instead of saving them).

    make_documents(epoch) -> that epoch's documents (already in their shuffled order). An
    epoch gives len(blocks) // blocks_per_step steps; the remainder is dropped.
    """

    def __init__(
        self,
        make_documents: Callable[[int], list[Document]],
        block_size: int,
        pad_id: int,
        blocks_per_step: int,
        seed: int,
    ) -> None:
        self.make_documents = make_documents
        self.block_size, self.pad_id = block_size, pad_id
        self.blocks_per_step, self.seed = blocks_per_step, seed
        self._epoch, self._blocks = -1, []
        self._epoch_first_step = [0]  # first global step of epoch e

    def epoch_blocks(self, epoch: int) -> list[PackedBlock]:
        if epoch != self._epoch:
            blocks = list(pack_documents(self.make_documents(epoch), self.block_size, self.pad_id))
            random.Random(f"blocks-{self.seed}-{epoch}").shuffle(blocks)
            if len(blocks) < self.blocks_per_step:
                raise ValueError(
                    f"epoch {epoch} packs into {len(blocks)} blocks, fewer than one step needs "
                    f"({self.blocks_per_step}); raise the mixture weights or lower the batch"
                )
            self._epoch, self._blocks = epoch, blocks
        return self._blocks

    def locate(self, step: int) -> tuple[int, int]:
        """step -> (epoch, index of the step within the epoch)."""
        epoch = 0
        while True:
            if epoch + 1 == len(self._epoch_first_step):
                steps = len(self.epoch_blocks(epoch)) // self.blocks_per_step
                self._epoch_first_step.append(self._epoch_first_step[epoch] + steps)
            if step < self._epoch_first_step[epoch + 1]:
                return epoch, step - self._epoch_first_step[epoch]
            epoch += 1

    def step_blocks(self, step: int) -> list[PackedBlock]:
        """The global batch of optimizer step `step` (0-based)."""
        epoch, index = self.locate(step)
        blocks = self.epoch_blocks(epoch)
        return blocks[index * self.blocks_per_step : (index + 1) * self.blocks_per_step]


def micro_batches(
    blocks: list[PackedBlock], process_index: int, num_processes: int, grad_accum: int
) -> list[dict[str, torch.Tensor]]:
    """This process's share of a step's blocks, as `grad_accum` collated micro-batches.
    Blocks are dealt in order: micro-batch m of process p holds the m-th run of blocks."""
    per_micro = len(blocks) // (num_processes * grad_accum)
    batches = []
    for micro in range(grad_accum):
        start = (micro * num_processes + process_index) * per_micro
        batches.append(collate_blocks(blocks[start : start + per_micro]))
    return batches


def count_targets(blocks: list[PackedBlock]) -> int:
    """Target tokens of blocks (labels are unshifted: position 0 is never a target)."""
    return sum(int((b.labels[1:] != IGNORE_INDEX).sum()) for b in blocks)


# ---------------------------------------------------------------- loss and evaluation


def token_loss_sum(
    model: Any, batch: dict[str, torch.Tensor], dtype: torch.dtype, packed: bool = True
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy of a packed batch [B, L] -> (sum, number of targets).

    Documents are kept apart by per-document attention (`packed`, the model must use
    PACKED_ATTENTION) or by the 4D block mask; logits are upcast to fp32 for the loss."""
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if "audio_features" in batch:  # continuous / summed input (mmllm.continuous)
        inputs["audio_features"] = batch["audio_features"]
    if packed:
        inputs["document_spans"] = document_spans(batch["document_ids"])
    else:
        inputs["attention_mask"] = block_attention_mask(batch["document_ids"], dtype=dtype)
    logits = model(**inputs).logits
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate(
    model: Any,
    eval_blocks: dict[str, list[PackedBlock]],
    accelerator: Any,
    dtype: torch.dtype,
    micro_batch_size: int,
    packed: bool = True,
) -> dict[str, float]:
    """Mean held-out loss per source. Blocks are dealt round-robin over processes; every
    process runs the same number of forwards (ZeRO-3 gathers parameters collectively), so
    short shares are topped up with blocks whose labels are all ignored (they count zero)."""
    was_training = model.training
    model.eval()
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    results = {}
    for source, blocks in eval_blocks.items():
        per_process = math.ceil(len(blocks) / world)
        mine = blocks[rank::world]
        filler = dataclasses.replace(
            blocks[0], labels=torch.full_like(blocks[0].labels, IGNORE_INDEX)
        )
        mine = mine + [filler] * (per_process - len(mine))
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        for start in range(0, per_process, micro_batch_size):
            batch = collate_blocks(mine[start : start + micro_batch_size])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, count = token_loss_sum(model, batch, dtype, packed)
            totals += torch.tensor([loss.item(), count], dtype=torch.float64, device=device)
        totals = accelerator.reduce(totals, reduction="sum")
        results[source] = float(totals[0] / totals[1])
    if was_training:
        model.train()
    return results


# ---------------------------------------------------------------- checkpoints


def fault_point(name: str, count: int) -> None:
    """Test hook: MMLLM_FAULT="<name>:<count>" kills this process (SIGKILL, no cleanup) the
    `count`-th time it reaches `name`. Used to prove checkpoints survive a kill."""
    if os.environ.get("MMLLM_FAULT") == f"{name}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(
    accelerator: Any, run_dir: str | Path, step: int, state: dict, keep: int, saves: int
) -> Path:
    """Write the full training state (model, optimizer, scheduler, RNG, `state`) of step
    `step` to a temporary directory, then rename it into place and point `latest` at it.
    A kill at any moment leaves the previous checkpoint and `latest` intact."""
    final = step_dir(Path(run_dir) / CHECKPOINTS, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(tmp / TRAINER_STATE, json.dumps(state, indent=1))
        fault_point("checkpoint-save", saves)  # tests: die with a complete tmp, before rename
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        publish_checkpoint(final, keep, complete=lambda p: (p / TRAINER_STATE).is_file())
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, or None. Half-written `.tmp-*` directories are never
    returned (they are what a kill during a save leaves behind)."""
    path = read_latest(Path(run_dir) / CHECKPOINTS)
    if path is not None and not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"{path.parent / LATEST} names {path.name}, which is not a complete checkpoint"
        )
    return path


def load_trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / TRAINER_STATE).read_text())
