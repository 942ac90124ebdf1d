"""Multi-codebook patterns at one budget: flatten, summed input + flatten output, delay, depth.

    python bench/codebook_patterns.py [--steps 300] [--limit 100] [--patterns flatten,delay]

Every variant trains the same model (the embedded default's sizes) on the same corpus (the
default, SynthDASB small with GRID sentences), mixture (KS, IC, SID, TTS) and number of
optimizer steps of the same packed blocks, with mel-rvq (4 codebooks x 256, log-mel
residual k-means, Griffin-Lim decodable: the offline multi-codebook tokenizer) as input and
output tokenizer; only the layout of the codes differs:

    flatten   audio_input discrete, data.pattern flatten: K tokens per frame in and out
    summed    audio_input summed, data.pattern flatten: one summed position per input
              frame, answers flattened
    delay     data.pattern delay: one step per frame, codebook k k steps late, K heads
    depth     data.pattern depth: one step per frame, a depth transformer for codebooks 1..3

Then `eval/dasb.py` on the test split (unseen voices): KS / IC / SID accuracy, TTS mel-
cepstral distance (DTW-aligned) and dWER through a separately trained ASR-only checkpoint
(`--asr`, default runs/asr-scorer-grid/final: see docs/results.md), and the TTS generation
speed (seconds of audio written per second, batched). Training speed comes from the run's
metrics.jsonl (median positions per second after the first steps, optimizer steps per
hour). Rows go to bench/results/codebook_patterns.json; each run stays under
runs/patterns/<variant> (`eval/compare.py runs/patterns/*` tables and plots them, with the
learned per-codebook input weights). Runs resume: a finished run is evaluated again only
if its dasb.json is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


VARIANTS = {
    "flatten": ["data.pattern=flatten"],
    "summed": ["data.pattern=flatten", "audio_input=summed"],
    "delay": ["data.pattern=delay"],
    "depth": ["data.pattern=depth"],
}


TASKS = "ks,ic,sid,tts"


def common_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"tokenizers.input={ROOT / 'configs/tokenizers/mel-rvq.yaml'}",
        f"tokenizers.input_overrides=[centroids={args.centroids}]",
        "data.mixture={ks: 1, ic: 1, sid: 1, tts: 1}",
        f"train.steps={args.steps}",
        f"train.eval_every={args.steps}",
        "train.checkpoint_every=0",
    ]


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def training_speed(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    settled = records[5:] or records  # the first steps pay for warm-up
    per_s = statistics.median(r["tokens_per_s"] for r in settled)
    step_s = statistics.median(r["tokens"] / r["tokens_per_s"] for r in settled)
    return {
        "train_tokens_per_s": round(per_s, 1),
        "optimizer_steps_per_hour": round(3600 / step_s, 1),
        "final_train_loss": round(records[-1]["loss"], 4),
    }


def variant_row(name: str, args: argparse.Namespace) -> dict:
    run_dir = Path(args.runs) / name
    final = run_dir / "final"
    if not (final / "manifest.sha256.json").is_file():
        started = time.perf_counter()
        overrides = [f"run_dir={run_dir}", *common_overrides(args), *VARIANTS[name]]
        run([sys.executable, "train/pretrain.py", *overrides])
        print(f"{name}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    report_path = run_dir / "dasb" / "dasb.json"
    if not report_path.is_file():
        command = [sys.executable, "eval/dasb.py", "--checkpoint", str(final)]
        command += ["--tasks", TASKS, "--limit", str(args.limit), "--out", str(run_dir / "dasb")]
        run(command + ["--asr", str(args.asr)])
    report = json.loads(report_path.read_text())["tasks"]
    tts = report["tts"]
    from mmllm.modeling.continuous import codebook_weights

    weights = codebook_weights(final)
    return {
        "pattern": name,
        **training_speed(run_dir),
        "generate_audio_s_per_s": round(tts["audio_s_per_s"], 2),
        "tts_mcd_db": round(tts["mcd_db"], 3),
        "tts_dwer": round(tts["dwer"], 4),
        "tts_length_ratio": round(tts["length_ratio"], 3),
        "ks_acc": report["ks"]["accuracy"],
        "ic_acc": report["ic"]["accuracy"],
        "sid_acc": report["sid"]["accuracy"],
        "codebook_weights": weights,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--limit", type=int, default=100, help="test rows per task")
    parser.add_argument("--patterns", default=",".join(VARIANTS))
    parser.add_argument("--centroids", default=ROOT / "runs/tokenizers/mel-rvq-small-grid")
    parser.add_argument("--asr", default=ROOT / "runs/asr-scorer-grid/final")
    parser.add_argument("--runs", default=ROOT / "runs/patterns", help="one run per variant")
    parser.add_argument("--out", default=ROOT / "bench/results/codebook_patterns.json")
    args = parser.parse_args()
    from mmllm.runtime import machine_facts, utc_timestamp

    rows = [variant_row(name, args) for name in args.patterns.split(",")]
    result = {
        "machine": machine_facts(),
        "measured": utc_timestamp(),
        "budget": {
            "steps": args.steps,
            "test_rows_per_task": args.limit,
            "tokenizer": "mel-rvq 4 x 256",
        },
        "tts_dwer_asr": str(args.asr),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
