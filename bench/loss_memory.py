"""Benchmark: peak memory of the training loss at a large vocabulary (V = 152,064, Qwen2.5's),
the full-logits cross-entropy against `token_loss_sum` (logits only at target positions,
fp32 cross-entropy in recomputed chunks), measured in one run.

    python bench/loss_memory.py [--vocab 152064] [--length 2048] [--out bench/results/loss_memory.json]

Each (workload, path) runs forward + backward once in a fresh process; its peak is the rise
of the process's maximum resident memory over what the model and batch already held.
Workloads: `task` (a 3/4 prompt without loss, then the answer: the shape of task rows) and
`lm` (every position a target: LM documents). The two paths must agree on the loss
(relative 1e-5). A 1-layer, 64-wide Llama keeps the model itself small: the logits dominate.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "loss_memory.json"


def measure(vocab: int, length: int, workload: str, path: str) -> dict:
    """One forward + backward in this process -> {"peak_mb", "loss"}."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmllm.data.packing import IGNORE_INDEX, Document, collate_blocks, pack_documents
    from mmllm.pretrain.steps import token_loss_sum

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=length,
    )
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, vocab, (length,)).tolist()
    prompt = 3 * length // 4 if workload == "task" else 0
    mask = [False] * prompt + [True] * (length - prompt)
    batch = collate_blocks(list(pack_documents([Document(ids, mask)], length, 0)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if path == "full-logits":
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, vocab),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
    else:
        loss, _ = token_loss_sum(model, batch, torch.float32, attention="mask")
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    return {"peak_mb": round(peak / 1024, 1), "loss": float(loss)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=152_064)
    parser.add_argument("--length", type=int, default=2048, help="positions in the block")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--one", nargs=2, metavar=("WORKLOAD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # the child process of one measurement
        print(json.dumps(measure(args.vocab, args.length, *args.one)))
        return 0
    from mmllm.fileio import atomic_write_text
    from mmllm.runtime import machine_facts, utc_timestamp

    rows = []
    for workload in ("task", "lm"):
        result = {}
        for path in ("full-logits", "token_loss_sum"):
            command = [sys.executable, __file__, "--vocab", str(args.vocab)]
            command += ["--length", str(args.length), "--one", workload, path]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            result[path] = json.loads(out.strip().splitlines()[-1])
        full, ours = result["full-logits"], result["token_loss_sum"]
        agree = abs(ours["loss"] - full["loss"]) <= 1e-5 * abs(full["loss"])
        rows.append(
            {
                "workload": workload,
                "full_logits_peak_mb": full["peak_mb"],
                "token_loss_sum_peak_mb": ours["peak_mb"],
                "ratio": round(ours["peak_mb"] / full["peak_mb"], 3),
                "loss_agrees_1e-5": agree,
            }
        )
        print(rows[-1])
    report = {
        "benchmark": "peak memory of the loss: full [B, L, V] logits vs token_loss_sum",
        "vocab": args.vocab,
        "positions": args.length,
        "rows": rows,
        "machine": machine_facts(),
        "timestamp": utc_timestamp(),
    }
    atomic_write_text(args.out, json.dumps(report, indent=1))
    return 0 if all(r["loss_agrees_1e-5"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
