"""The device check: the GPU path end to end on whatever accelerator this machine has, in one
command (`bash bench/device_check.sh`), at most ~8 minutes on one H100.

Each check runs the real CLIs in a subprocess with its own time limit, so one failure is
recorded and the others still run:

    train-tiny-zero2      the tiny config, bf16, DeepSpeed ZeRO-2: tokens/s, peak memory
    train-135m-zero2/3    a ~130M-parameter random Llama (bf16, packed attention) under
                          ZeRO-2 and ZeRO-3: tokens/s, MFU against the card's bf16 peak, peak memory
    continuous-bf16       the continuous-input baseline (projector) in bf16
    lora-zero3-export     LoRA under ZeRO-3 with every parameter partitioned, exported and reloaded
    train-135m-flex       the same under ZeRO-2 with train.attention=flex (FlexAttention)
    attention-equality    the fused per-document paths (repadded SDPA, FlexAttention) against the
                          4D block mask: logits, gradients, step time
    generation            `mmllm eval` on the tiny run: batched constrained generation, seconds
    tokenizers            batched vs one-by-one EnCodec / DAC / Mimi encoding, random weights

Writes bench/results/device/<date>-<device>.json (atomically) and prints one line per check;
exits 1 if any check failed. `--allow-cpu` runs the same checks on a CPU with smaller sizes
(a dry run of this script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "device"
TINY = "configs/pretrain/tiny.yaml"
# dense bf16 peak FLOP/s by card name (the vendors' data sheets, without sparsity)
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
MODEL_130M = [  # hidden 768, 18 layers: ~128M in the layers, plus embeddings
    "model.hidden_size=768",
    "model.num_layers=18",
    "model.num_heads=12",
    "model.intermediate_size=2048",
]


def accelerate(stage: int, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--zero_stage",
        str(stage), "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "train/pretrain.py", "--config", TINY, *args,
    ]  # fmt: skip


def run(command: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {result.returncode}: {' | '.join(tail)}")
    return result, seconds


def train_metrics(run_dir: Path, stdout: str, peak_flops: float | None) -> dict:
    """tokens/s (median of the second half of the steps), peak memory, MFU from the log."""
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    later = records[len(records) // 2 :]
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in later)
    found = re.search(r"model: ([\d.]+)M parameters", stdout)
    params = float(found.group(1)) * 1e6 if found else None
    metrics = {"steps": len(records), "tokens_per_s": round(tokens_per_s, 1), "params": params}
    if records and "gpu_peak_gb" in records[-1]:
        metrics["gpu_peak_gb"] = round(max(r["gpu_peak_gb"] for r in records), 2)
    if peak_flops and params:  # 6 N FLOPs per trained token (forward + backward)
        metrics["mfu"] = round(6 * params * tokens_per_s / peak_flops, 4)
    return metrics


def attention_equality(device: str) -> dict:
    """Largest logit and gradient differences of the fused per-document paths (repadded SDPA;
    FlexAttention on CUDA) against the 4D block mask, fp32 and bf16, and their step times."""
    code = f"""
import json, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
from mmllm.data.packing import Document, collate_blocks, pack_documents, block_attention_mask
from mmllm.modeling.attention import PACKED_ATTENTION, packed_documents
torch.manual_seed(0)
paths = ["packed", "flex"] if "{device}" == "cuda" else ["packed"]
out = {{}}
for dtype in (torch.float32, torch.bfloat16):
    reference = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=256,
        intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)).to("{device}", dtype)
    lengths = [300, 150, 500, 37, 800, 1, 260, 999, 64, 700]
    docs = [Document([(7 * i + j) % 1000 for j in range(n)], [True] * n) for i, n in enumerate(lengths)]
    batch = {{k: v.to("{device}") for k, v in collate_blocks(list(pack_documents(docs, 1024, 0))).items()}}
    ids, pos, doc = batch["input_ids"], batch["position_ids"], batch["document_ids"]
    real = doc >= 0  # padding positions attend to nothing: not compared
    def step(model, **kw):
        model.zero_grad()
        logits = model(input_ids=ids, position_ids=pos, **kw).logits
        logits[real].float().square().mean().backward()
        return logits[real].float(), [p.grad.float() for p in model.parameters()]
    want, want_grads = step(reference, attention_mask=block_attention_mask(doc, dtype=dtype))
    name = str(dtype).split(".")[-1]
    for path in paths:
        model = LlamaForCausalLM(reference.config).to("{device}", dtype)
        model.load_state_dict(reference.state_dict())
        model.set_attn_implementation(PACKED_ATTENTION)
        layout = lambda: packed_documents(doc, flex=path == "flex")
        got, grads = step(model, packed_documents=layout())
        for _ in range(3):
            step(model, packed_documents=layout())
        if "{device}" == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(10):
            step(model, packed_documents=layout())
        if "{device}" == "cuda":
            torch.cuda.synchronize()
        out[f"{{path}}-{{name}}"] = {{
            "max_abs_logit_diff": float((got - want).abs().max()),
            "max_rel_grad_diff": max(float((g - w).norm() / w.norm().clamp_min(1e-12))
                                     for g, w in zip(grads, want_grads)),
            "ms_per_step": round((time.perf_counter() - started) * 100, 2),
        }}
print(json.dumps(out))
"""
    result, _ = run([sys.executable, "-c", code], timeout=240)
    diffs = json.loads(result.stdout.strip().splitlines()[-1])
    for key, value in diffs.items():
        logit_limit, grad_limit = (1e-3, 1e-3) if key.endswith("float32") else (0.1, 0.05)
        if value["max_abs_logit_diff"] > logit_limit or value["max_rel_grad_diff"] > grad_limit:
            raise RuntimeError(f"packed attention {key} differs from the block mask: {value}")
    return {"paths": diffs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allow-cpu", action="store_true", help="dry run on a CPU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("device_check: no CUDA device on this machine (torch.cuda.is_available() is False)",
              file=sys.stderr)  # fmt: skip
        return 2
    from mmllm.fileio import atomic_write_text
    from mmllm.runtime import machine_facts, utc_timestamp

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = next((flops for card, flops in BF16_PEAK.items() if card in name), None)
    precision = "train.precision=bf16" if cuda else "train.precision=fp32"
    scale = MODEL_130M if cuda else ["model.hidden_size=64", "model.num_layers=2"]
    work = ROOT / "runs" / "device_check"
    steps = "30" if cuda else "3"

    def train(run_name: str, stage: int, *extra: str, timeout: float = 150) -> dict:
        run_dir = work / run_name
        result, seconds = run(
            accelerate(stage, f"run_dir={run_dir}", precision, f"train.steps={steps}",
                       "train.eval_every=0", "train.checkpoint_every=0", *extra),
            timeout,
        )  # fmt: skip
        return {"seconds": round(seconds, 1)} | train_metrics(run_dir, result.stdout, peak)

    checks = {
        "train-tiny-zero2": lambda: train("tiny-zero2", 2, timeout=240),
        "train-135m-zero2": lambda: train("135m-zero2", 2, *scale, "train.micro_batch_size=4"),
        "train-135m-zero3": lambda: train("135m-zero3", 3, *scale, "train.micro_batch_size=4"),
        "train-135m-flex": lambda: train(
            "135m-flex",
            2,
            *scale,
            "train.micro_batch_size=4",
            "train.attention=flex" if cuda else "train.attention=packed",
        ),  # fmt: skip
        "continuous-bf16": lambda: train(
            "continuous",
            2,
            "audio_input=continuous",
            "tokenizers.input=configs/tokenizers/mfcc-features.yaml",
            "tokenizers.input_overrides=[]",
            "tokenizers.output=configs/tokenizers/mfcc-kmeans.yaml",
            "tokenizers.output_overrides=[codebook_size=64, centroids=runs/tokenizers/mfcc-kmeans-tiny]",
            "data.mixture={asr: 1, ks: 1, tts: 1}",
        ),  # fmt: skip
        "lora-zero3-export": lambda: lora_export(work, precision, steps),
        "attention-equality": lambda: attention_equality("cuda" if cuda else "cpu"),
        "generation": lambda: generation(work / "tiny-zero2" / "final"),
        "tokenizers": lambda: tokenizers(work, cuda),
    }
    report = {"device": name, "bf16_peak_flops": peak, "checks": {}}
    for check, body in checks.items():
        started = time.perf_counter()
        try:
            report["checks"][check] = {"ok": True} | body()
        except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as err:
            report["checks"][check] = {"ok": False, "error": str(err)[-600:]}
        seconds = time.perf_counter() - started
        print(f"{check:20s} {'ok' if report['checks'][check]['ok'] else 'FAILED'} ({seconds:.0f} s)"
              f" {json.dumps({k: v for k, v in report['checks'][check].items() if k != 'ok'})}")  # fmt: skip
    report |= {"machine": machine_facts(), "timestamp": utc_timestamp()}
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out = args.out or RESULTS / f"{time.strftime('%Y-%m-%d')}-{slug}.json"
    atomic_write_text(out, json.dumps(report, indent=1))
    print(f"-> {out}")
    return 0 if all(c["ok"] for c in report["checks"].values()) else 1


def lora_export(work: Path, precision: str, steps: str) -> dict:
    """LoRA under ZeRO-3 with every parameter partitioned; the export reloads."""
    ds = json.loads((ROOT / "configs/deepspeed/zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    config = work / "zero3-partition-all.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(ds))
    run_dir = work / "lora-zero3"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
        "train/pretrain.py", "--config", TINY, f"run_dir={run_dir}", precision,
        f"train.steps={steps}", "train.eval_every=0", "train.checkpoint_every=0",
        "model.lora={r: 8, alpha: 16}", f"train.deepspeed={config}",
    ]  # fmt: skip
    _, seconds = run(command, 240)
    code = (
        "from transformers import AutoModelForCausalLM; import sys\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(run_dir / 'final')!r})\n"
        "assert not any('lora' in n for n, _ in m.named_parameters())\n"
    )
    run([sys.executable, "-c", code], 60)
    return {"seconds": round(seconds, 1)}


def generation(checkpoint: Path) -> dict:
    out = checkpoint.parent / "eval"
    command = [sys.executable, "-m", "mmllm", "eval", "--checkpoint", str(checkpoint)]
    command += ["--tasks", "ks,asr,tts", "--limit", "32", "--out", str(out)]
    _, seconds = run(command, 240)
    return {"seconds": round(seconds, 1), "prompts": 96}


def tokenizers(work: Path, cuda: bool) -> dict:
    out = work / "tokenizer_speed.json"
    seconds = "30" if cuda else "4"
    command = [sys.executable, "bench/tokenizer_speed.py", "--seconds", seconds, "--out", str(out)]
    run(command, 240)
    report = json.loads(out.read_text())
    return {"backends": report["backends"], "targets": report["targets"]}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
