"""The comparison report: runs' DASB results side by side, shaped like DASB's Tables 2-3.

    report = compare_runs(["runs/compare/mfcc-kmeans", "runs/compare/continuous"], out_dir)

Each run directory holds `eval/dasb.json` (eval/dasb.py) or is such a file. Rows are the
runs (audio tokenizer and bitrate, the input mode when it is not discrete: the continuous
baseline, or "(summed)" codebook embeddings), columns the tasks, each with its primary metric
and direction; the best value per column is marked in bold. Writes `comparison.md`,
`comparison.json`, `tasks.png` (one bar chart per task) and `score_vs_bitrate.png` (each
task's score against the input bitrate; continuous inputs are drawn at the bitrate of their
cached float16 features, with a different marker). Runs of one setup that differ only in
`train.seed` (their checkpoints' mmllm_pretrain.yaml agree on everything else but
bookkeeping, and they were evaluated alike) become one row "<input> (N seeds)": means, with
± the sample standard deviation in the table and as error bars in `tasks.png`, and every
seed's value in the JSON. Runs whose checkpoint holds learned
input weights -- summed input and the delay / depth patterns (one per codebook) and
continuous SSL layer features (one per
layer, DASB's "which layers matter") -- also get those softmax weights in the JSON
(`codebook_weights`, name -> weight) and markdown and in `codebook_weights.png`: which
codebooks or layers the model listens to.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

from mmllm.fileio import atomic_write_text

# task -> (metric, higher is better, how to print it)
PRIMARY = {
    "asr": ("wer", False, "WER %"),
    "ks": ("accuracy", True, "acc %"),
    "ic": ("accuracy", True, "acc %"),
    "er": ("accuracy", True, "acc %"),
    "sid": ("accuracy", True, "acc %"),
    "sv": ("eer", False, "EER %"),
    "se": ("si_snr_improvement", True, "SI-SNRi dB"),
    "ss": ("si_snr_improvement", True, "SI-SNRi dB"),
    "tts": ("dwer", False, "dWER %"),
}


# used when a run's audio answers could not be decoded (no vocoder yet)
FALLBACK = ("code_agreement", True, "code agr. %")


PERCENT = {"wer", "accuracy", "eer", "dwer", "code_agreement"}


def load_result(path: str | Path) -> dict:
    path = Path(path)
    file = path if path.suffix == ".json" else path / "eval" / "dasb.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {file.name} (run eval/dasb.py on its checkpoint)")
    try:
        result = json.loads(file.read_text())
    except ValueError as err:
        raise ValueError(f"{file}: not valid JSON ({err}); rerun mmllm eval for it") from None
    if not isinstance(result, dict) or "tasks" not in result:
        raise ValueError(f"{file}: not an mmllm eval report (no 'tasks'); rerun mmllm eval for it")
    result["run"] = str(path if path.suffix != ".json" else path.parent)
    return result


def run_label(result: dict) -> str:
    """Row name: input mode, tokenizer and its non-default options (e.g. cmvn=none), the
    codebook pattern when it is not flatten (`[delay]`, `[depth]`), plus
    the report's `input_settings` (input_norm, output_rms, audio_input_rms; reports from
    before 2026-12-03 (acd1103) have none: a per-frame LayerNorm and the default init)."""
    name = result["input_tokenizer"]
    options = dict(result.get("input_options") or {}) | (result.get("input_settings") or {})
    if options:
        name += " (" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + ")"
    pattern = result.get("pattern", "flatten")  # reports from before it was recorded: flatten
    if pattern != "flatten":
        name += f" [{pattern}]"
    if result.get("audio_input") == "continuous":
        return f"continuous: {name}"
    if result.get("audio_input") == "summed":
        return f"{name} (summed)"
    return name


def learned_input_weights(result: dict) -> dict[str, float] | None:
    """The learned input weights (per codebook of a summed-input run, per layer of SSL layer
    features; mmllm.modeling.continuous.codebook_weights) of the checkpoint its dasb.json names, else
    of <run>/final; None for other runs."""
    from mmllm.modeling.continuous import codebook_weights

    for directory in checkpoint_dirs(result):
        weights = codebook_weights(directory)
        if weights is not None:
            return weights
    return None


def checkpoint_dirs(result: dict) -> list[Path]:
    """Where a result's checkpoint may be: the one its dasb.json names, then <run>/final."""
    named = result.get("checkpoint")
    return ([Path(named)] if named else []) + [Path(result["run"]) / "final"]


def metric_for(task: str, results: list[dict]) -> tuple[str, bool, str]:
    """The task's primary metric if every run has it, else the code-level fallback."""
    metric = PRIMARY[task]
    if all(metric[0] in r["tasks"].get(task, {}) for r in results):
        return metric
    return FALLBACK


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if metric in PERCENT else f"{value:.2f}"


# Pretrain config keys that do not change what a run learns: runs whose configs agree on
# everything else (and were evaluated alike) are seeds of one setup.
BOOKKEEPING = {
    "run_dir",
    "train.seed",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.cpu_threads",
}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def setup_and_seed(result: dict) -> tuple[str, int] | None:
    """(what the run learnt from, as a string equal for seeds of one setup; its train.seed),
    from the mmllm_pretrain.yaml of the checkpoint its dasb.json names (else <run>/final)
    plus how it was evaluated; None when no config is found."""
    import yaml

    for directory in checkpoint_dirs(result):
        config = directory / "mmllm_pretrain.yaml"
        if config.is_file():
            flat = _flatten(yaml.safe_load(config.read_text()))
            setup = {k: v for k, v in flat.items() if k not in BOOKKEEPING}
            setup |= {"eval": [result.get("split"), result.get("generation")]}
            return json.dumps(setup, sort_keys=True, default=str), int(flat.get("train.seed", 0))
    return None


def merge_seeds(rows: list[dict], seeds: list[int]) -> dict:
    """One row for runs of one setup with different seeds: each score the mean over the
    runs that have it; `seeds`, `runs`, and per task `per_seed` values and sample `sd`."""
    merged = {
        "runs": [row["run"] for row in rows],
        "seeds": seeds,
        "bitrate_bps": rows[0]["bitrate_bps"],
        "scores": {},
        "per_seed": {},
        "sd": {},
    }
    for task in rows[0]["scores"]:
        values = [row["scores"][task] for row in rows if row["scores"][task] is not None]
        merged["per_seed"][task] = [row["scores"][task] for row in rows]
        merged["scores"][task] = statistics.fmean(values) if values else None
        if len(values) > 1:
            merged["sd"][task] = statistics.stdev(values)  # sample sd (n - 1)
    weighted = [row["codebook_weights"] for row in rows if "codebook_weights" in row]
    if weighted:
        merged["codebook_weights"] = {
            name: statistics.fmean(w[name] for w in weighted) for name in weighted[0]
        }
    return merged


def compare_runs(paths: list[str | Path], out_dir: str | Path) -> dict:
    """The report over the runs at `paths`; runs of one setup that differ only in
    `train.seed` become one row of means (`merge_seeds`), shown as mean ± sd."""
    results = [load_result(p) for p in paths]
    tasks = [t for t in PRIMARY if any(t in r["tasks"] for r in results)]
    columns = {task: metric_for(task, results) for task in tasks}
    groups: dict[tuple, list[tuple[dict, int | None]]] = {}
    for i, result in enumerate(results):
        row = {"run": result["run"], "bitrate_bps": result.get("bitrate_bps"), "scores": {}}
        for task, (metric, _, _) in columns.items():
            row["scores"][task] = result["tasks"].get(task, {}).get(metric)
        weights = learned_input_weights(result)
        if weights is not None:
            row["codebook_weights"] = weights
        found = setup_and_seed(result)
        key = (run_label(result), found[0] if found else i)
        groups.setdefault(key, []).append((row, found[1] if found else None))
    table: dict[str, dict[str, Any]] = {}
    labelled: set[str] = set()  # input labels a row already has
    for (label, _), members in groups.items():
        seeds = [seed for _, seed in members]
        if len(members) > 1 and len(set(seeds)) == len(seeds):
            rows = [(f"{label} ({len(seeds)} seeds)", merge_seeds([r for r, _ in members], seeds))]
        else:  # one run, or repeats of one seed: a row each
            rows = [(label, row) for row, _ in members]
        for name, row in rows:
            # Another setup of the same input (budget, mixture, corpus...) or a repeat of one
            # seed: name the run, also when a seed count already sets the first row's name apart.
            if label in labelled:
                name = f"{name} [{Path(row.get('run') or row['runs'][0]).name}]"
            labelled.add(label)
            table[name] = row
    best = {}
    for task, (_, higher, _) in columns.items():
        values = [row["scores"][task] for row in table.values() if row["scores"][task] is not None]
        if values:
            best[task] = max(values) if higher else min(values)
    header = ["input", "bitrate"] + [
        f"{task.upper()} {label} {'↑' if higher else '↓'}"
        for task, (_, higher, label) in columns.items()
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in table.items():
        bitrate = row["bitrate_bps"]
        rate = "-" if not bitrate else f"{bitrate / 1000:.2f} kbps"
        if label.startswith("continuous"):
            rate = f"continuous ({rate} as fp16)"
        cells = [label, rate]
        for task, (metric, _, _) in columns.items():
            value = row["scores"][task]
            text = _cell(value, metric)
            text = f"**{text}**" if value is not None and value == best.get(task) else text
            if task in row.get("sd", {}):
                text += f" ± {_cell(row['sd'][task], metric)}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"- {task.upper()}: {metric}"
        + (
            f" instead of {PRIMARY[task][0]}, which some run lacks (no decoder for its audio "
            "answers, or no --asr for dWER): the share of generated codes equal to "
            "the reference codes, comparable only between runs with the same output tokenizer"
            if (metric, higher, label) == FALLBACK
            else ""
        )
        for task, (metric, higher, label) in columns.items()
    ]
    markdown = "\n".join(lines) + "\n\nMetrics:\n" + "\n".join(notes) + "\n"
    weighted = {
        label: row["codebook_weights"] for label, row in table.items() if "codebook_weights" in row
    }
    if weighted:
        markdown += "\nLearned input weights (softmax over codebooks or SSL layers):\n" + "".join(
            f"- {label}: {', '.join(f'{name} {w:.3f}' for name, w in weights.items())}\n"
            for label, weights in weighted.items()
        )
    report = {"columns": {t: list(c) for t, c in columns.items()}, "runs": table, "best": best}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "comparison.md", markdown)
    atomic_write_text(out_dir / "comparison.json", json.dumps(report, indent=1))
    plot_comparison(table, columns, out_dir)
    if weighted:
        plot_codebook_weights(weighted, out_dir / "codebook_weights.png")
    return report | {"markdown": markdown}


def plot_comparison(table: dict, columns: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table)
    count = len(columns)
    figure, axes = plt.subplots(1, count, figsize=(2.6 * count, 3.6), squeeze=False)
    for axis, (task, (metric, higher, unit)) in zip(axes[0], columns.items(), strict=True):
        values = [table[label]["scores"][task] or 0.0 for label in labels]
        spread = [table[label].get("sd", {}).get(task, 0.0) for label in labels]
        scale = 100 if metric in PERCENT else 1
        axis.bar(
            range(len(labels)),
            [v * scale for v in values],
            yerr=[sd * scale for sd in spread],  # seeds of one setup: ± their sd
            color=[f"C{i}" for i in range(len(labels))],
        )
        axis.set_title(f"{task.upper()} {'↑' if higher else '↓'}", fontsize=9)
        axis.set_ylabel(unit, fontsize=8)
        axis.set_xticks(
            range(len(labels)), plot_labels(labels), rotation=60, ha="right", fontsize=7
        )
    figure.tight_layout()
    _save(figure, out_dir / "tasks.png")

    figure, axes = plt.subplots(1, count, figsize=(2.6 * count, 3.2), squeeze=False)
    for axis, (task, (metric, higher, unit)) in zip(axes[0], columns.items(), strict=True):
        scale = 100 if metric in PERCENT else 1
        for i, label in enumerate(labels):
            row = table[label]
            value = row["scores"][task]
            if value is None or not row["bitrate_bps"]:
                continue
            marker = "s" if label.startswith("continuous") else "o"
            axis.scatter(
                row["bitrate_bps"], value * scale, color=f"C{i}", marker=marker, label=label
            )
        axis.set_xscale("log")
        axis.set_title(f"{task.upper()} {'↑' if higher else '↓'}", fontsize=9)
        axis.set_xlabel("input bitrate (bps)", fontsize=8)
        axis.set_ylabel(unit, fontsize=8)
    axes[0][0].legend(fontsize=6)
    figure.tight_layout()
    _save(figure, out_dir / "score_vs_bitrate.png")
    plt.close("all")


def plot_labels(labels: list[str]) -> list[str]:
    """Row labels for the plots' axes, without the `key=value` options every row shares
    (they tell the bars nothing and crowd the axis): "mel-rvq (audio_input_rms=1.0) [delay]"
    beside "mel-rvq (audio_input_rms=1.0)" becomes "mel-rvq [delay]" and "mel-rvq"."""
    found = [re.search(r" \(([^()]*=[^()]*)\)", label) for label in labels]
    sets = [set(match.group(1).split(", ")) if match else set() for match in found]
    shared = set.intersection(*sets) if sets else set()
    short = []
    for label, match in zip(labels, found, strict=True):
        if match and shared:
            kept = [option for option in match.group(1).split(", ") if option not in shared]
            label = label.replace(match.group(0), f" ({', '.join(kept)})" if kept else "")
        short.append(label)
    return short


def plot_codebook_weights(weighted: dict[str, dict[str, float]], path: Path) -> None:
    """One group of bars per run (its codebooks or layers left to right, one colour per name
    across runs), the uniform 1/K dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    most = max(len(weights) for weights in weighted.values())
    width = 0.8 / most
    figure, axis = plt.subplots(figsize=(max(4.0, 1.2 + 0.3 * len(weighted) * most), 3.2))
    colours: dict[str, str] = {}  # codebook / layer name -> colour, in order of appearance
    handles = {}  # legend entry -> artist, one per name however many runs have it
    for i, weights in enumerate(weighted.values()):
        count = len(weights)
        offsets = [i + (k - (count - 1) / 2) * width for k in range(count)]
        for x, (name, weight) in zip(offsets, weights.items(), strict=True):
            colour = colours.setdefault(name, f"C{len(colours) % 10}")
            handles[name] = axis.bar(x, weight, width, color=colour)
        low, high = offsets[0] - width / 2, offsets[-1] + width / 2
        handles["uniform 1/K"] = axis.hlines(1 / count, low, high, "k", "dashed", lw=0.8)
    axis.set_xticks(range(len(weighted)), plot_labels(list(weighted)), fontsize=7)
    axis.set_ylabel("softmax weight", fontsize=8)
    axis.set_title("learned input weights (codebooks or SSL layers)", fontsize=8)
    axis.legend(handles.values(), handles.keys(), fontsize=6)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def _save(figure: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png", dpi=110)
    tmp.replace(path)
