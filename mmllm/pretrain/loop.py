"""The pretraining job, top to bottom: prepare data -> build vocab and model -> check the
config against the data -> prepare with accelerate -> resume from the latest checkpoint if
there is one -> eval at step 0 -> train (log, eval, checkpoint) -> eval, export in HF
format, summary.

Run it with `accelerate launch train/pretrain.py [--config FILE] [KEY=VALUE ...]` or
`mmllm pretrain ...`. Outputs in `run_dir`: run.json, config.yaml, metrics.jsonl (one line
per step), evals.jsonl, tensorboard/, checkpoints/, final/ (AutoModelForCausalLM /
AutoTokenizer loadable), loss_curves.png.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed

from mmllm.config import (
    ConfigError,
    add_config_arguments,
    command_parser,
    load_config,
    save_config,
)
from mmllm.data.patterns import MULTI_STREAM
from mmllm.data.stream import BlockStream
from mmllm.fileio import (
    LockedError,
    append_jsonl,
    atomic_write_text,
    exclusive_lock,
    log_at_step,
    read_jsonl,
    truncate_jsonl,
)
from mmllm.pretrain.build import apply_lora, build_model, make_optimizer, wrap_audio_input
from mmllm.pretrain.config import PretrainConfig, check_pretrain_config, resume_identity
from mmllm.pretrain.distributed import (
    deepspeed_config,
    deepspeed_config_path,
    prepare_deepspeed_environment,
    whole_model_loading,
)
from mmllm.pretrain.examples import write_examples
from mmllm.pretrain.schedule import count_targets, micro_batches
from mmllm.pretrain.steps import evaluate, token_loss_sum
from mmllm.training.checkpoints import (
    check_run,
    fault_point,
    latest_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from mmllm.training.optim import lr_multiplier


def parse_config(argv: list[str] | None) -> PretrainConfig:
    parser = command_parser(
        "pretrain",
        "Pretrain a causal LM on interleaved text and audio tokens (the main job).",
    )
    add_config_arguments(parser, PretrainConfig)
    args = parser.parse_args(argv)
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    check_pretrain_config(cfg)
    return cfg


def make_accelerator(cfg: PretrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, DistributedDataParallelKwargs

    cuda = torch.cuda.is_available()
    if cfg.train.attention == "flex" and not cuda:
        raise ValueError(
            "train.attention=flex needs CUDA (FlexAttention has no backward pass on CPU); "
            "use train.attention=packed"
        )
    if not cuda:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(cfg.train.cpu_threads or max(1, cores // local_processes))
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and cuda)
    ds_path = deepspeed_config_path(cfg.train)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plugin = None
    if ds_path:
        if world > 1 and not cuda:
            raise ValueError(
                f"DeepSpeed ({ds_path}) with {world} CPU processes: accelerate runs DeepSpeed "
                "on CPU with one process only; set train.deepspeed=null for multi-process DDP"
            )
        prepare_deepspeed_environment()
        ds = deepspeed_config(ds_path, cfg.train, cfg.optim.grad_clip, bf16)
        plugin = DeepSpeedPlugin(hf_ds_config=ds)
    handlers = []
    if (cfg.audio_input != "discrete" or cfg.data.pattern in MULTI_STREAM) and plugin is None:
        # a micro-batch of text documents only never calls the input's projector / mixing
        # weights: DDP must expect parameters without gradients
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    accelerator = Accelerator(
        kwargs_handlers=handlers,
        cpu=not cuda and plugin is None,  # cpu=True makes torchrun's processes a gloo group
        deepspeed_plugin=plugin,
        mixed_precision="bf16" if bf16 else "no",
        gradient_accumulation_steps=cfg.train.grad_accum,
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step ourselves
        log_with="tensorboard",
        project_dir=cfg.run_dir,
    )
    return accelerator, ds_path, torch.bfloat16 if bf16 else torch.float32


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        accelerator, ds_path, dtype = make_accelerator(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # one writer per run directory: the main process holds its lock for the whole run
    lock = exclusive_lock(cfg.run_dir) if accelerator.is_main_process else nullcontext()
    try:
        with lock:
            return train(cfg, accelerator, ds_path, dtype)
    except LockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def train(cfg: PretrainConfig, accelerator: Any, ds_path: str | None, dtype: torch.dtype) -> int:
    """Prepare, train, evaluate and export one run (the caller holds the run's lock)."""
    from accelerate.utils import gather_object

    from mmllm.pretrain.pipeline import prepare_run

    run_dir = Path(cfg.run_dir)
    world, rank = accelerator.num_processes, accelerator.process_index
    is_main = accelerator.is_main_process
    say = accelerator.print
    torch.manual_seed(cfg.train.seed)

    # ---- data, vocabulary, model; every check that can fail runs before training starts
    try:
        with whole_model_loading(accelerator):  # the tokenizers' models load whole too
            run = prepare_run(cfg, accelerator)
    except (ConfigError, ValueError, FileNotFoundError, LockedError) as err:
        say(f"error: {err}")
        return 2
    vocab = run.vocab
    attention = cfg.train.attention
    with whole_model_loading(accelerator):
        model = build_model(
            cfg.model,
            vocab,
            cfg.data.block_size,
            cfg.train.seed,
            run.centroids,
            attention != "mask",
        )
        if cfg.model.lora is not None:
            model = apply_lora(model, cfg.model.lora, vocab, cfg.model.freeze_audio)
        model = wrap_audio_input(
            model,
            vocab,
            cfg.audio_input,
            run.caches.input.num_codebooks,
            cfg.continuous,
            run.caches.input.feature_layers,
            run.feature_stats,
            cfg.data.pattern,
            run.caches.output.name,
            cfg.model.depth,
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    say(
        f"model: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable), vocab "
        f"{vocab.size} = {vocab.text_size} text + {vocab.num_added} added; "
        f"{'DeepSpeed ' + ds_path if ds_path else 'DDP/single process'}, {world} process(es), {dtype}"
    )
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, cfg.optim, cfg.train.steps)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    blocks_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum * world
    lanes = cfg.data.lanes or world
    if lanes % world or blocks_per_step % lanes:
        say(
            f"error: data.lanes {lanes} must be a multiple of the {world} process(es) and "
            f"divide the {blocks_per_step} blocks of a step (micro_batch_size x grad_accum x "
            "processes)"
        )
        return 2

    # ---- resume, or start fresh
    start_step, state = 0, {}
    try:
        check_run(run_dir, resume_identity(cfg, world))
        checkpoint = latest_checkpoint(run_dir, clean=is_main)
    except (ValueError, FileNotFoundError) as err:  # another run's directory, corrupt files
        say(f"error: {err}")
        return 2
    if checkpoint is not None:
        state = load_trainer_state(checkpoint)
        if "loader" not in state:
            say(f"error: {checkpoint} holds no data loader position; start a new run_dir")
            return 2
        accelerator.load_state(str(checkpoint))
        start_step = state["step"]
        say(f"resumed from {checkpoint} at step {start_step}")
    stream = BlockStream(
        run.window_source(lanes),
        list(range(rank, lanes, world)),  # this process's lanes
        state.get("loader"),
        workers=cfg.data.workers,
        pin_memory=accelerator.device.type == "cuda",
    )
    if is_main:
        save_config(cfg, run_dir)
        truncate_jsonl(run_dir / "metrics.jsonl", start_step)
        truncate_jsonl(run_dir / "evals.jsonl", start_step)
    accelerator.init_trackers("tensorboard")
    if checkpoint is None:
        state = {"step": 0}
        state["eval_at_start"] = evaluate(
            model, run.eval_blocks, accelerator, dtype, cfg.train.micro_batch_size, attention
        )
        log_eval(accelerator, run_dir, 0, state["eval_at_start"])

    # ---- train
    progress = None
    if is_main:
        from tqdm import tqdm

        progress = tqdm(total=cfg.train.steps, initial=start_step, desc="pretrain", unit="step")
    saves = 0
    # delay / depth: a target step's codebooks 1..K-1 are targets too (mmllm.modeling.multicodebook)
    multi = cfg.data.pattern in MULTI_STREAM
    step_ids = (vocab.audio_embed_id, vocab.pad_audio_id) if multi else ()
    model.train()
    for step in range(start_step, cfg.train.steps):
        started = time.perf_counter()
        blocks = stream.take(blocks_per_step // lanes)  # this process's share of the step
        # the global targets and tokens, so every process scales its loss the same
        counts = torch.tensor(
            [count_targets(blocks, *step_ids), sum(b.used for b in blocks)],
            dtype=torch.float64,
            device=accelerator.device,
        )
        targets, tokens = accelerator.reduce(counts, reduction="sum").tolist()
        loss_sum, grad_norm = torch.zeros((), dtype=torch.float64), None
        for batch in micro_batches(blocks, cfg.train.grad_accum):
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            with accelerator.accumulate(model):
                loss, _ = token_loss_sum(model, batch, dtype, attention)
                # sum / global targets, times what DDP's averaging and accelerate's
                # division by grad_accum take away again
                accelerator.backward(loss * (world * cfg.train.grad_accum / targets))
                if accelerator.sync_gradients:  # the last micro-batch: clip, then step
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()  # a no-op until sync_gradients
                optimizer.zero_grad()
            loss_sum += loss.detach().double().cpu()
        scheduler.step()  # once per optimizer step, whatever the number of processes
        loss_sum = accelerator.reduce(loss_sum.to(accelerator.device), reduction="sum")
        step_loss = float(loss_sum) / targets
        seconds = time.perf_counter() - started
        record = {
            "step": step + 1,
            "loss": step_loss,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens": int(tokens),
            "tokens_per_s": tokens / seconds,
        }
        if torch.cuda.is_available():
            record["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if is_main:
            append_jsonl(run_dir / "metrics.jsonl", record)
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens / seconds:.0f}")
        if (step + 1) % cfg.train.log_every == 0:
            accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step + 1)
        done = step + 1 == cfg.train.steps
        if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and not done:
            losses = evaluate(
                model, run.eval_blocks, accelerator, dtype, cfg.train.micro_batch_size, attention
            )
            log_eval(accelerator, run_dir, step + 1, losses)
        if cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0:
            saves += 1
            state["step"] = step + 1
            lane_states = gather_object([stream.state()])  # every process's lanes
            state["loader"] = {k: v for part in lane_states for k, v in part.items()}
            save_checkpoint(
                run_dir,
                step + 1,
                state,
                cfg.train.keep_checkpoints,
                lambda tmp: accelerator.save_state(str(tmp)),
                is_main=is_main,
                barrier=accelerator.wait_for_everyone,
                saves=saves,
            )
        fault_point("after-step", step + 1)  # tests: die here, as a kill between steps would
    if progress is not None:
        progress.close()

    # ---- final eval, export, summary
    final = evaluate(
        model, run.eval_blocks, accelerator, dtype, cfg.train.micro_batch_size, attention
    )
    log_eval(accelerator, run_dir, cfg.train.steps, final)
    export_dir = run.export(model, accelerator, run_dir / "final")
    accelerator.end_training()
    if is_main:
        summary = summarize(state["eval_at_start"], final)
        atomic_write_text(run_dir / "eval_summary.json", json.dumps(summary, indent=1))
        plot_curves(run_dir)
        print(format_summary(summary, cfg.train.steps))
        print(f"checkpoint (HF format): {export_dir}")
        # ready-to-run prompts on test clips; TTS where the output tokens become audio
        speaks = bool(run.tokenizer_configs["output"].vocoder) or run.caches.output.can_decode
        speaker = (run.answers.get("tts_speakers") or [None])[0] if speaks else None
        sources = [s for s, weight in cfg.data.mixture.items() if weight > 0]
        corpus = Path(cfg.corpus.path)
        print("\n".join(write_examples(run_dir, corpus, export_dir, sources, speaker)))
    return 0


# ---------------------------------------------------------------- logs


def log_eval(accelerator, run_dir: Path, step: int, losses: dict[str, float]) -> None:
    accelerator.log({f"eval/{source}": loss for source, loss in losses.items()}, step)
    if accelerator.is_main_process:
        log_at_step(run_dir / "evals.jsonl", {"step": step, "loss": losses})


def summarize(start: dict[str, float], end: dict[str, float]) -> dict:
    return {
        source: {"step_0": start[source], "final": end[source], "fell": end[source] < start[source]}
        for source in start
    }


def format_summary(summary: dict, steps: int) -> str:
    lines = [f"held-out loss per source (valid split): step 0 -> step {steps}"]
    for source, row in summary.items():
        mark = "fell" if row["fell"] else "DID NOT FALL"
        lines.append(f"  {source:12s} {row['step_0']:7.3f} -> {row['final']:7.3f}  {mark}")
    return "\n".join(lines)


def plot_curves(run_dir: Path) -> None:
    """loss_curves.png: training loss per step and held-out loss per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    evals = read_jsonl(run_dir / "evals.jsonl")
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], lw=0.8)
    left.set(xlabel="step", ylabel="train loss (nats/token)", title="training loss")
    for source in evals[0]["loss"]:
        right.plot(
            [e["step"] for e in evals], [e["loss"][source] for e in evals], marker="o", label=source
        )
    right.set(xlabel="step", ylabel="held-out loss", title="held-out loss per source")
    right.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    tmp = run_dir / ".loss_curves.png.tmp"
    figure.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, run_dir / "loss_curves.png")
    plt.close(figure)
