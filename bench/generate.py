"""Benchmark: batched constrained generation (mmllm.eval.generation) vs one-by-one `model.generate`.

    python bench/generate.py [--checkpoint runs/pretrain/default/final] [--data data/synthdasb-small]
                             [--cache data/tokens/mfcc-kmeans] [--per-task 32] [--batch-size 32]
                             [--threads 1] [--repeats 3]

On the embedded default checkpoint, the same test prompts are generated

    baseline     one prompt at a time with plain `model.generate` (greedy, same
                 max_new_tokens, eos = <|eos_task|>): what a first eval script would do
    batched      `mmllm.eval.generation.generate`, batched + KV-cached + constrained (the answer grammar)
    unconstrained  the same batched loop without the grammar: isolates what batching alone
                 gives, and its outputs must equal the baseline's (batching is exact)

for two workloads: `text` (ks + asr prompts: long audio prompts, short answers, so prompt
processing, identical in both, dominates) and `audio` (tts prompts: short text prompts,
long audio answers, so per-token decoding dominates); `prompt_processing_seconds` times one
forward per prompt, which bounds what batching can gain on a CPU, where a batched forward
costs about the sum of the single ones. Times are the median of `--repeats`;
agreement counts identical outputs, and `differences_explained` counts the differing rows
whose baseline token at the first difference is one the grammar forbids (greedy constrained
and unconstrained may differ only there).

The `cli` workload times what a user types: `mmllm generate --checkpoint C ks CLIPS/` once
for `--cli-inputs` test clips (one process, one model load, batched) against one
`mmllm generate` call per clip, and checks both print the same answers. Writes
bench/results/generate.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mmllm.fileio import atomic_write_text
from mmllm.runtime import keep_freed_memory, machine_facts, utc_timestamp

RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"
WORKLOADS = {  # name -> (tasks, max_new_tokens)
    "text": (("ks", "asr"), 48),
    "audio": (("tts",), 160),
    "cli": (("ks",), None),
}


def load_prompts(checkpoint, data: Path, cache: Path, tasks, per_task: int):
    """Test rows of each task -> (prompts, tasks, rows) with the checkpoint's renderer."""
    from mmllm.data.mixture import TokenCaches, source_rows

    caches = TokenCaches.open(cache)
    renderer = checkpoint.renderer()
    prompts, row_tasks, rows = [], [], []
    for task in tasks:
        input_codes, output_codes = caches.lookups(task, "test")
        for row in source_rows(data, task, "test")[:per_task]:
            prompts.append(renderer.render(row, input_codes, output_codes).prompt)
            row_tasks.append(task)
            rows.append(row)
    return prompts, row_tasks, rows


def baseline(model, prompts, eos: int, max_new_tokens: int) -> list[list[int]]:
    """One prompt at a time through plain `model.generate`; cut after the first eos."""
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            new = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos,
            )[0, len(prompt) :].tolist()
            outputs.append(new[: new.index(eos) + 1] if eos in new else new)
    return outputs


def prompt_processing(model, prompts) -> None:
    """One forward per prompt, last logits only: the work no batching removes on a CPU."""
    with torch.no_grad():
        for prompt in prompts:
            model(torch.tensor([prompt]), logits_to_keep=1)


def timed(fn, repeats: int):
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return result, statistics.median(seconds), seconds


def forbidden_at_first_difference(grammar, task, plain, constrained, max_new) -> bool:
    """Replay the grammar along the constrained output; is the baseline's token at the first
    difference one it forbids?"""
    first = next(
        (i for i, (a, b) in enumerate(zip(plain, constrained, strict=False)) if a != b),
        min(len(plain), len(constrained)),
    )
    if first >= len(plain):
        return False
    processor = grammar.processor([task], max_new_tokens=max_new)
    scores = torch.zeros(1, grammar.vocab.size)
    ids = torch.zeros(1, 1, dtype=torch.long)
    for token in constrained[:first]:
        processor(ids, scores)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return bool(torch.isinf(processor(ids, scores)[0, plain[first]]))


def quality(checkpoint, rows, tasks, outputs) -> dict:
    """ks accuracy, asr WER, tts well-formed answers (ends with eos, one closed span)."""
    from mmllm.eval.generation import audio_spans, decode_text
    from mmllm.eval.metrics import accuracy, wer

    vocab, text = checkpoint.vocab, checkpoint.tokenizer
    report = {}
    by_task = {}
    for row, task, output in zip(rows, tasks, outputs, strict=True):
        by_task.setdefault(task, []).append((row, output))
    if "ks" in by_task:
        labels = [r["label"] for r, _ in by_task["ks"]]
        predictions = [decode_text(o, text, vocab) for _, o in by_task["ks"]]
        report["ks_accuracy"] = round(
            accuracy(labels, predictions, sorted(set(labels))).accuracy, 4
        )
    if "asr" in by_task:
        refs = [r["text"] for r, _ in by_task["asr"]]
        hyps = [decode_text(o, text, vocab) for _, o in by_task["asr"]]
        report["asr_wer"] = round(wer(refs, hyps).rate, 4)
    if "tts" in by_task:
        eos, end = vocab.eos_task_id, vocab.audio_end_id
        good = [
            bool(o)
            and o[-1] == eos
            and o[0] == vocab.audio_start_id
            and o[-2] == end
            and len(audio_spans(o, vocab)) == 1
            for _, o in by_task["tts"]
        ]
        report["tts_well_formed"] = f"{sum(good)}/{len(good)}"
    return report


def run_workload(name, checkpoint, model, args) -> dict:
    from mmllm.eval.generation import GenerationConfig, generate

    task_names, max_new = WORKLOADS[name]
    prompts, tasks, rows = load_prompts(
        checkpoint, args.data, args.cache, task_names, args.per_task
    )
    vocab, grammar = checkpoint.vocab, checkpoint.grammar()
    eos = vocab.eos_task_id
    config = GenerationConfig(max_new_tokens=max_new, batch_size=args.batch_size)
    plain_cfg = GenerationConfig(
        max_new_tokens=max_new, batch_size=args.batch_size, constrained=False
    )
    # warm-up: first calls allocate and build masks
    baseline(model, prompts[:2], eos, 4)
    generate(
        model,
        prompts[:4],
        vocab,
        GenerationConfig(max_new_tokens=4),
        tasks=tasks[:4],
        grammar=grammar,
    )

    runs = {
        "baseline": lambda: baseline(model, prompts, eos, max_new),
        "batched": lambda: generate(model, prompts, vocab, config, tasks=tasks, grammar=grammar),
        "unconstrained": lambda: generate(
            model, prompts, vocab, plain_cfg, tasks=tasks, grammar=grammar
        ),
    }
    results, outputs = {}, {}
    for key, fn in runs.items():
        outputs[key], seconds, all_seconds = timed(fn, args.repeats)
        tokens = sum(len(o) for o in outputs[key])
        results[key] = {
            "seconds_median": round(seconds, 3),
            "seconds_all": [round(s, 3) for s in all_seconds],
            "prompts_per_s": round(len(prompts) / seconds, 2),
            "generated_tokens": tokens,
            "generated_tokens_per_s": round(tokens / seconds, 1),
            **quality(checkpoint, rows, tasks, outputs[key]),
        }
    _, prefill, _ = timed(lambda: prompt_processing(model, prompts), args.repeats)
    plain, constrained = outputs["baseline"], outputs["batched"]
    differing = [i for i in range(len(prompts)) if plain[i] != constrained[i]]
    explained = sum(
        forbidden_at_first_difference(grammar, tasks[i], plain[i], constrained[i], max_new)
        for i in differing
    )
    report = {
        "tasks": list(task_names),
        "prompts": len(prompts),
        "prompt_tokens_mean": round(statistics.mean(len(p) for p in prompts), 1),
        "max_new_tokens": max_new,
        "batch_size": args.batch_size,
        **results,
        "ratios": {
            "batched / baseline (prompts/s)": round(
                results["baseline"]["seconds_median"] / results["batched"]["seconds_median"], 2
            ),
            "unconstrained / baseline (prompts/s)": round(
                results["baseline"]["seconds_median"] / results["unconstrained"]["seconds_median"],
                2,
            ),
            # if every generated token were free, the baseline's prompt forwards would remain
            "upper bound: baseline / prompt processing alone": round(
                results["baseline"]["seconds_median"] / prefill, 2
            ),
        },
        "prompt_processing_seconds": round(prefill, 3),
        "agreement": {
            "batched == baseline": f"{len(prompts) - len(differing)}/{len(prompts)}",
            "differences_explained_by_the_grammar": f"{explained}/{len(differing)}",
            "unconstrained == baseline": (
                f"{sum(a == b for a, b in zip(outputs['unconstrained'], plain, strict=True))}"
                f"/{len(prompts)}"
            ),
        },
    }
    if "ks" in task_names:  # label-restricted decoding: accuracy over the test label set
        ks = [i for i, t in enumerate(tasks) if t == "ks"]
        label_set = sorted({rows[i]["label"] for i in ks})
        restricted = generate(
            model,
            [prompts[i] for i in ks],
            vocab,
            config,
            tasks="ks",
            grammar=grammar,
            allowed_texts=label_set,
        )
        report["ks_with_allowed_texts"] = quality(
            checkpoint, [rows[i] for i in ks], ["ks"] * len(ks), restricted
        )
    return report


def cli_calls(args) -> dict:
    """`--cli-inputs` KS test clips as WAVs; one `mmllm generate` call over their folder
    against one call per clip (each a fresh process, as a user's shell loop would be)."""
    import subprocess

    from mmllm.corpus.reader import load_task
    from mmllm.pretrain.examples import write_clip

    clips = Path("runs/bench_generate/clips")
    clips.mkdir(parents=True, exist_ok=True)
    rows = load_task(args.data, "ks")["test"].select(range(args.cli_inputs))
    paths = []
    for row in rows:
        path = clips / f"{row['id']}.wav"
        if not path.is_file():
            write_clip(path, row)
        paths.append(str(path))
    command = ["mmllm", "generate", "--checkpoint", str(args.checkpoint), "ks"]

    def run(inputs: list[str]) -> list[str]:
        result = subprocess.run(command + inputs, capture_output=True, text=True, check=True)
        return result.stdout.strip().splitlines()

    started = time.perf_counter()
    batched = dict(line.split("\t") for line in run([str(clips)]))
    one_call = time.perf_counter() - started
    started = time.perf_counter()
    single = {path: run([path])[0] for path in paths}
    per_input = time.perf_counter() - started
    return {
        "inputs": len(paths),
        "one_call_seconds": round(one_call, 2),
        "one_call_per_input_seconds": round(per_input, 2),
        "speedup": round(per_input / one_call, 2),
        "answers_agree": sum(batched[p] == single[p] for p in paths) / len(paths),
        "label_accuracy": sum(batched[p] == r["label"] for p, r in zip(paths, rows, strict=True))
        / len(paths),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/pretrain/default/final"))
    parser.add_argument("--data", type=Path, default=Path("data/synthdasb-small"))
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="token cache (default: the checkpoint's, under data/tokens)",
    )
    parser.add_argument("--per-task", type=int, default=32, help="test prompts per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine a second OpenMP thread that waits "
        "for a busy core makes every op many times slower, for both variants)",
    )
    parser.add_argument("--cli-inputs", type=int, default=64, help="clips of the cli workload")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.checkpoint / "mmllm_vocab.json").is_file():
        print(
            f"error: no checkpoint at {args.checkpoint}; make it with "
            "`accelerate launch train/pretrain.py` (the embedded default)",
            file=sys.stderr,
        )
        return 2
    from transformers.utils import logging as hf_logging

    from mmllm.eval.prompting import Checkpoint

    hf_logging.disable_progress_bar()
    keep_freed_memory()  # the KV cache grows by reallocation every step
    torch.set_num_threads(args.threads)
    checkpoint = Checkpoint.open(args.checkpoint)
    if args.cache is None:
        from mmllm.data.cache import token_cache_dir

        args.cache = token_cache_dir("data/tokens", checkpoint.input_config)
    model = checkpoint.load_model("cpu")
    report = {
        "benchmark": "generation: mmllm.eval.generation (batched, KV-cached, constrained) vs one-by-one "
        "model.generate",
        "checkpoint": str(args.checkpoint),
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "workloads": {
            name: cli_calls(args) if name == "cli" else run_workload(name, checkpoint, model, args)
            for name in args.workloads
        },
        "machine": machine_facts(),
        "date": utc_timestamp(),
    }
    text = json.dumps(report, indent=2)
    atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
