"""Benchmark: training-step throughput and MFU of packing against per-example padded batches.

    python bench/train_throughput.py [--config configs/pretrain/default.yaml] [--documents 1200]
                                     [--baseline-batch 16] [KEY=VALUE ...]

The same documents (the first `--documents` of epoch 0 of the config's mixture: real task
rows and LM documents) go through the same model (the config's, fp32, AdamW step included)
three ways, measured in one run:

    padded        the naive baseline: batches of `--baseline-batch` documents in mixture
                  order, each padded to the longest in its batch, 2D padding mask (SDPA)
    packed-mask   packed blocks of `data.block_size`, 4D block-diagonal mask (SDPA computes
                  every pair of the block, then masks)
    packed-loop   packed blocks, per-document causal attention as one SDPA call per (row,
                  document, layer), spans read on the host: the path before the fused one
    packed        packed blocks, per-document causal attention with the documents repadded
                  into one SDPA call per layer (mmllm.modeling.attention): what
                  train/pretrain.py runs (`train.attention=packed`)

Useful tokens are the documents' own tokens. Useful FLOPs per document of n tokens:
6 * P * n (P = parameters of every matmul: attention and MLP projections and the output
layer; embeddings and norms excluded) + 6 * layers * hidden * n * (n + 1) (causal QK^T and
AV, forward and backward). MFU = useful FLOPs / s over the fp32 matmul peak measured here
(best of square matmuls, same threads). Needs the config's data prepared (the pretrain job
or its pipeline builds it). Writes bench/results/train_throughput.json (atomically).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mmllm.config import add_config_arguments, load_config
from mmllm.data.packing import IGNORE_INDEX, Document, collate_blocks, pack_documents
from mmllm.fileio import atomic_write_text
from mmllm.pretrain.build import build_model, make_optimizer
from mmllm.pretrain.config import OptimSection, PretrainConfig
from mmllm.pretrain.steps import token_loss_sum
from mmllm.runtime import machine_facts, utc_timestamp

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"


def matmul_peak_gflops(repeats: int = 5) -> float:
    best = 0.0
    for size in (1024, 2048):
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def useful_flops(model, documents: list[Document]) -> float:
    config = model.config
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    lengths = torch.tensor([len(d.input_ids) for d in documents], dtype=torch.float64)
    attention = 6 * config.num_hidden_layers * config.hidden_size * (lengths * (lengths + 1)).sum()
    return float(6 * matmul_params * lengths.sum() + attention)


def padded_batches(documents: list[Document], batch_size: int, pad_id: int):
    for start in range(0, len(documents), batch_size):
        chunk = documents[start : start + batch_size]
        width = max(len(d.input_ids) for d in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), IGNORE_INDEX)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, doc in enumerate(chunk):
            n = len(doc.input_ids)
            ids[row, :n] = torch.tensor(doc.input_ids)
            keep = torch.tensor(doc.loss_mask)
            labels[row, :n] = torch.where(keep, ids[row, :n], IGNORE_INDEX)
            mask[row, :n] = 1
        yield {"input_ids": ids, "labels": labels, "attention_mask": mask}


LOOP_ATTENTION = "bench_per_document_loop"


def per_document_loop_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs
):
    """The per-document loop that the fused path replaced (kept here as its baseline):
    query [B, H, L, d] -> [B, L, H, d], one SDPA call per (row, document)."""
    ids = kwargs["packed_documents"].document_ids
    output = query.new_zeros(query.shape)
    for row, documents in enumerate(ids.tolist()):
        start = 0
        for i in range(1, len(documents) + 1):
            if i == len(documents) or documents[i] != documents[start]:
                if documents[start] >= 0:
                    output[row, :, start:i] = F.scaled_dot_product_attention(
                        query[row : row + 1, :, start:i],
                        key[row : row + 1, :, start:i],
                        value[row : row + 1, :, start:i],
                        is_causal=True,
                        scale=scaling,
                        enable_gqa=key.shape[1] != query.shape[1],
                    )[0]
                start = i
    return output.transpose(1, 2), None


AttentionInterface.register(LOOP_ATTENTION, per_document_loop_attention)
AttentionMaskInterface.register(LOOP_ATTENTION, sdpa_mask)


def padded_step(model, batch) -> None:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
    loss.backward()


def packed_step(model, batch, attention: str) -> None:
    loss, count = token_loss_sum(model, batch, torch.float32, attention)
    (loss / max(count, 1)).backward()


def timed(model, batches: list, step, warmup: int = 2) -> float:
    """Seconds for one pass over `batches` (forward, backward, AdamW), after `warmup` steps."""
    optimizer = make_optimizer(model, OptimSection(lr=1e-4))
    for batch in batches[:warmup]:
        step(model, batch)
        optimizer.step()
        optimizer.zero_grad()
    started = time.perf_counter()
    for batch in batches:
        step(model, batch)
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--documents", type=int, default=1200)
    parser.add_argument("--baseline-batch", type=int, default=16)
    args = parser.parse_args(argv)
    from accelerate import Accelerator

    from mmllm.pretrain.pipeline import prepare_run

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    accelerator = Accelerator(cpu=True)
    torch.set_num_threads(cfg.train.cpu_threads or len(os.sched_getaffinity(0)))
    run = prepare_run(cfg, accelerator)
    documents = run.train_documents(0)[: args.documents]
    pad_id = run.vocab.pad_audio_id
    blocks = list(pack_documents(documents, cfg.data.block_size, pad_id))
    micro = cfg.train.micro_batch_size
    packed_batches = [collate_blocks(blocks[i : i + micro]) for i in range(0, len(blocks), micro)]
    baseline_batches = list(padded_batches(documents, args.baseline_batch, pad_id))

    packed_model = build_model(cfg.model, run.vocab, cfg.data.block_size, cfg.train.seed)
    sdpa_model = copy.deepcopy(packed_model)
    sdpa_model.set_attn_implementation("sdpa")
    loop_model = copy.deepcopy(packed_model)
    loop_model.set_attn_implementation(LOOP_ATTENTION)
    peak = matmul_peak_gflops()
    flops = useful_flops(packed_model, documents)
    useful_tokens = sum(len(d.input_ids) for d in documents)
    variants = {
        "padded": (sdpa_model, baseline_batches, padded_step),
        "packed-mask": (sdpa_model, packed_batches, lambda m, b: packed_step(m, b, "mask")),
        "packed-loop": (loop_model, packed_batches, lambda m, b: packed_step(m, b, "packed")),
        "packed": (packed_model, packed_batches, lambda m, b: packed_step(m, b, "packed")),
    }
    results = {}
    for name, (model, batches, step) in variants.items():
        model = copy.deepcopy(model)  # every variant starts from the same weights
        seconds = timed(model, batches, step)
        computed = sum(b["input_ids"].numel() for b in batches)
        results[name] = {
            "seconds": round(seconds, 3),
            "batches": len(batches),
            "useful_tokens_per_s": round(useful_tokens / seconds, 1),
            "computed_tokens_per_s": round(computed / seconds, 1),
            "padding_fraction": round(1 - useful_tokens / computed, 4),
            "mfu_useful": round(flops / seconds / (peak * 1e9), 4),
        }
        print(name, results[name], flush=True)
    report = {
        "benchmark": "train_throughput",
        "date": utc_timestamp(),
        "machine": machine_facts(),
        "config": str(args.config or "embedded default"),
        "model_parameters": sum(p.numel() for p in packed_model.parameters()),
        "block_size": cfg.data.block_size,
        "micro_batch_blocks": micro,
        "baseline_batch_documents": args.baseline_batch,
        "documents": len(documents),
        "useful_tokens": useful_tokens,
        "useful_gflop": round(flops / 1e9, 2),
        "matmul_peak_gflops": round(peak, 1),
        "results": results,
        "speedup_packed_vs_padded": round(
            results["packed"]["useful_tokens_per_s"] / results["padded"]["useful_tokens_per_s"], 3
        ),
        "speedup_packed_vs_packed_mask": round(
            results["packed"]["useful_tokens_per_s"]
            / results["packed-mask"]["useful_tokens_per_s"],
            3,
        ),
        "speedup_packed_vs_packed_loop": round(
            results["packed"]["useful_tokens_per_s"]
            / results["packed-loop"]["useful_tokens_per_s"],
            3,
        ),
        "targets": {"speedup_vs_padded": 1.5, "mfu_useful": 0.5, "speedup_vs_packed_loop": 1.0},
    }
    text = json.dumps(report, indent=2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
