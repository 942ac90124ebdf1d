"""Training a token vocoder (`mmllm vocoder`, `tokenizers/train_vocoder.py`): random aligned
segments of (cached codes, audio) pairs, AdamW, multi-resolution STFT + log-mel losses
(`mmllm.vocoder.losses`), the optional discriminators (`mmllm.vocoder.gan`), checkpoints
through `mmllm.training.checkpoints` (a resumed run's losses equal an uninterrupted one's),
and the export to vocoder.safetensors + vocoder.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmllm.config import config_hash
from mmllm.data.cache import read_cache_card
from mmllm.fileio import (
    exclusive_lock,
    state_dict_bytes,
    truncate_jsonl,
)
from mmllm.tokenizers.vocoder import (
    CARD_FILENAME,
    TokenVocoder,
    VocoderConfig,
    read_card,
    save_vocoder,
    tokenizer_signature,
)
from mmllm.training.checkpoints import check_run, latest_checkpoint, load_trainer_state
from mmllm.training.checkpoints import save_checkpoint as save_checkpoint_dir
from mmllm.training.optim import lr_multiplier, make_adamw
from mmllm.vocoder.data import SegmentSampler
from mmllm.vocoder.losses import vocoder_losses

if TYPE_CHECKING:
    from mmllm.vocoder.gan import AdversarialTraining


METRICS = "metrics.jsonl"
DISCRIMINATOR_FILENAME = "discriminator.safetensors"  # checkpoints only, never exported
TRAINER_TENSORS = "trainer.pt"  # optimizer and RNG states: tensors only (weights_only load)


def save_checkpoint(
    out: Path,
    step: int,
    model: TokenVocoder,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    keep: int,
    adversarial: AdversarialTraining | None = None,
) -> Path:
    """The training state of `step` through the trainers' one mechanism
    (`mmllm.training.checkpoints.save_checkpoint`): model.safetensors, the optimizer and
    batch RNG in trainer.pt, and with `adversarial` the discriminators
    (discriminator.safetensors) and their optimizer."""

    def write_state(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(state_dict_bytes(model.state_dict()))
        trainer = {"optimizer": optimizer.state_dict(), "generator": generator.get_state()}
        if adversarial is not None:
            weights = state_dict_bytes(adversarial.discriminator.state_dict())
            (tmp / DISCRIMINATOR_FILENAME).write_bytes(weights)
            trainer["discriminator_optimizer"] = adversarial.optimizer.state_dict()
        torch.save(trainer, tmp / TRAINER_TENSORS)

    return save_checkpoint_dir(out, step, {}, keep, write_state)


def load_checkpoint(
    out: Path,
    model: TokenVocoder,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    adversarial: AdversarialTraining | None = None,
) -> int:
    """Restore the checkpoint `latest` names (if any) -> its step (0 without one)."""
    from safetensors.torch import load_file

    path = latest_checkpoint(out, clean=True)
    if path is None:
        return 0
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
    trainer = torch.load(path / TRAINER_TENSORS, map_location=device, weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    generator.set_state(trainer["generator"].cpu())
    if adversarial is not None:
        if not (path / DISCRIMINATOR_FILENAME).is_file():
            raise ValueError(f"{path}: checkpoint of a run without discriminators (adversarial)")
        weights = load_file(str(path / DISCRIMINATOR_FILENAME), device=str(device))
        adversarial.discriminator.load_state_dict(weights)
        adversarial.optimizer.load_state_dict(trainer["discriminator_optimizer"])
    return int(load_trainer_state(path)["step"])


def train_vocoder(
    cfg: VocoderConfig,
    tokenizer_cfg: Any,
    data_dir: str | Path,
    cache_dir: str | Path,
    out_dir: str | Path,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    other_processes_wait: bool = False,
) -> list[dict[str, float]]:
    """Train a vocoder for `tokenizer_cfg`'s codes in cache_dir (built from data_dir) and
    export it to out_dir (vocoder.safetensors + vocoder.json).

    Resumes from out_dir/checkpoints/latest when there is one (model, optimizer, sampling
    RNG, step, and the discriminators with their optimizer when `cfg.adversarial` is set):
    the losses of a resumed run equal those of one that never stopped.
    `stop_after` (tests) returns after that step without exporting, like a kill would.
    `other_processes_wait`: a launch of several processes calls it from the main one only
    (the pretraining pipeline), the others waiting.
    One writer per out_dir (a second raises LockedError).
    Returns the per-step records of the steps run by this call (also in metrics.jsonl).
    """
    with exclusive_lock(out_dir):
        from accelerate import PartialState
        from tqdm import tqdm

        from mmllm.config import save_config

        state = PartialState(cpu=not torch.cuda.is_available())
        if state.num_processes > 1 and not other_processes_wait:
            raise RuntimeError(
                f"train_vocoder runs in one process, got {state.num_processes}; launch it with "
                f"python or accelerate launch --num_processes 1"
            )
        out = Path(out_dir)
        card = read_cache_card(cache_dir, tokenizer_cfg)
        signature = tokenizer_signature(tokenizer_cfg, card["tokenizer_properties"])
        hop = signature["sample_rate"] / signature["frame_rate_hz"]
        if signature["sample_rate"] != cfg.sample_rate or hop != cfg.hop:
            raise ValueError(
                f"vocoder config: sample_rate {cfg.sample_rate} / hop {cfg.hop} do not match "
                f"tokenizer {signature['name']!r} ({signature['sample_rate']} Hz, {hop:g} samples per frame)"
            )
        if signature["deduplicate"]:
            raise ValueError("a vocoder needs one code per frame; the tokenizer sets `deduplicate`")
        sampler = SegmentSampler(data_dir, cache_dir, card, cfg)
        if cfg.speaker_conditioning and len(sampler.speakers) > cfg.num_speakers:
            raise ValueError(
                f"key 'num_speakers': {cfg.num_speakers}, but the training rows have "
                f"{len(sampler.speakers)} speakers"
            )
        out.mkdir(parents=True, exist_ok=True)
        check_run(
            out,
            {"vocoder_config_hash": config_hash(cfg), "tokenizer": signature},
            what="vocoder config or tokenizer",
        )
        save_config(cfg, out, "vocoder_config.yaml")
        if (out / CARD_FILENAME).is_file() and read_card(out).get("trained_steps") == cfg.steps:
            print(f"{out}: vocoder already trained ({cfg.steps} steps)")
            return []

        device = state.device
        torch.manual_seed(cfg.seed)
        model = TokenVocoder(cfg, signature["num_codebooks"], signature["codebook_size"]).to(device)
        optimizer = make_optimizer(model, cfg)
        adversarial = None
        if cfg.adversarial is not None:
            from mmllm.vocoder.gan import AdversarialTraining

            adversarial = AdversarialTraining(cfg, device)
        generator = torch.Generator().manual_seed(cfg.seed)  # batches: CPU, saved with checkpoints
        step = load_checkpoint(out, model, optimizer, generator, adversarial)
        truncate_jsonl(out / METRICS, step)
        records: list[dict[str, float]] = []
        model.train()
        with (
            tqdm(total=cfg.steps, initial=step, unit="step", disable=not progress) as bar,
            open(out / METRICS, "a") as log,
        ):
            while step < cfg.steps:
                step += 1
                multiplier = lr_multiplier(step - 1, cfg, cfg.steps)  # the trainer's schedule
                lr = cfg.lr * multiplier
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if adversarial is not None:
                    adversarial.set_lr(multiplier)
                codes, wav, speakers = sampler.sample(cfg.batch_size, generator)
                frame_lengths = torch.full((cfg.batch_size,), cfg.segment_frames, device=device)
                speakers = speakers.to(device) if cfg.speaker_conditioning else None
                predicted = model(codes.to(device), frame_lengths, speakers)
                wav = wav.to(device)
                losses = vocoder_losses(predicted, wav, cfg)
                if adversarial is not None and adversarial.active(step):  # D update, + G terms
                    losses = adversarial.train_step(wav, predicted, losses)
                optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                record = {"step": step, "lr": lr, "grad_norm": float(grad_norm)}
                record |= {name: float(value.detach()) for name, value in losses.items()}
                records.append(record)
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.update()
                if step % cfg.log_every == 0 or step == cfg.steps:
                    shown = {
                        k: f"{record[k]:.3f}" for k in ("loss", "mel", "d_loss") if k in record
                    }
                    bar.set_postfix(shown)
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    save_checkpoint(
                        out, step, model, optimizer, generator, cfg.keep_checkpoints, adversarial
                    )
                if stop_after is not None and step >= stop_after:
                    return records
        model.eval()
        extra = {
            "trained_steps": step,
            "data": str(data_dir),
            "final_loss": records[-1] if records else None,
        }
        save_vocoder(
            model, out, signature, sampler.speakers if cfg.speaker_conditioning else None, extra
        )
        return records


def make_optimizer(model: nn.Module, cfg: VocoderConfig) -> torch.optim.AdamW:
    """The trainers' AdamW (`mmllm.training.optim.make_adamw`) at cfg.lr: weight decay on
    matrices only, none on norms, biases, layer scales, codebook logits."""
    return make_adamw(model.parameters(), cfg.lr, tuple(cfg.betas), cfg.weight_decay)
