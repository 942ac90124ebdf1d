"""Comparison report: the table marks the best run per column, fallbacks are named."""

import json

import pytest

from mmllm.eval.compare import compare_runs


def write_run(root, name, audio_input, tokenizer, bitrate, tasks):
    eval_dir = root / name / "eval"
    eval_dir.mkdir(parents=True)
    report = {
        "audio_input": audio_input,
        "input_tokenizer": tokenizer,
        "bitrate_bps": bitrate,
        "tasks": tasks,
    }
    (eval_dir / "dasb.json").write_text(json.dumps(report))
    return root / name


def test_table_marks_best_per_column_and_falls_back_to_code_agreement(tmp_path):
    a = write_run(
        tmp_path,
        "a",
        "discrete",
        "mfcc-kmeans",
        448.0,
        {"asr": {"wer": 0.30}, "ks": {"accuracy": 0.90}, "se": {"code_agreement": 0.2}},
    )
    b = write_run(
        tmp_path,
        "b",
        "continuous",
        "mfcc-features",
        20800.0,
        {
            "asr": {"wer": 0.20},
            "ks": {"accuracy": 0.95},
            "se": {"code_agreement": 0.1, "si_snr_improvement": 3.0},
        },
    )
    report = compare_runs([a, b], tmp_path / "out")
    lines = report["markdown"].splitlines()
    assert lines[0].startswith("| input | bitrate | ASR WER % ↓ | KS acc % ↑ | SE code agr. % ↑")
    assert lines[2] == "| mfcc-kmeans | 0.45 kbps | 30.0 | 90.0 | **20.0** |"
    assert (
        lines[3]
        == "| continuous: mfcc-features | continuous (20.80 kbps as fp16) | **20.0** | **95.0** | 10.0 |"
    )
    # SE falls back because run a has no SI-SNRi, and the notes say so
    assert report["columns"]["se"][0] == "code_agreement"
    assert "instead of si_snr_improvement, which some run lacks" in report["markdown"]
    for name in ("comparison.md", "comparison.json", "tasks.png", "score_vs_bitrate.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_summed_run_is_labelled_and_its_codebook_weights_plotted(tmp_path):
    import torch

    from mmllm.modeling.continuous import CodebookSum, save_projector

    discrete = write_run(
        tmp_path, "mel-rvq", "discrete", "mel-rvq", 1600.0, {"ks": {"accuracy": 0.5}}
    )
    summed = write_run(tmp_path, "summed", "summed", "mel-rvq", 1600.0, {"ks": {"accuracy": 0.6}})
    module = CodebookSum(4, torch.nn.Embedding(8, 2))
    with torch.no_grad():
        module.weights.copy_(torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1])))
    (summed / "final").mkdir()
    save_projector(module, summed / "final")
    report = compare_runs([discrete, summed], tmp_path / "out")
    assert list(report["runs"]) == ["mel-rvq", "mel-rvq (summed)"]
    assert "codebook_weights" not in report["runs"]["mel-rvq"]
    weights = json.loads((tmp_path / "out" / "comparison.json").read_text())["runs"]
    assert weights["mel-rvq (summed)"]["codebook_weights"] == pytest.approx(
        {"codebook 0": 0.4, "codebook 1": 0.3, "codebook 2": 0.2, "codebook 3": 0.1}
    )
    assert "| mel-rvq (summed) | 1.60 kbps | **60.0** |" in report["markdown"]
    assert (
        "- mel-rvq (summed): codebook 0 0.400, codebook 1 0.300, codebook 2 0.200, codebook 3 0.100"
        in report["markdown"]
    )
    assert (tmp_path / "out" / "codebook_weights.png").stat().st_size > 5_000


def test_runs_of_the_same_tokenizer_get_distinct_rows(tmp_path):
    tasks = {"ks": {"accuracy": 0.5}}
    utterance = write_run(tmp_path, "continuous", "continuous", "mfcc-features", 20800.0, tasks)
    raw = write_run(tmp_path, "continuous-raw", "continuous", "mfcc-features", 20800.0, tasks)
    report_file = raw / "eval" / "dasb.json"
    report = json.loads(report_file.read_text())
    report_file.write_text(json.dumps(report | {"input_options": {"cmvn": "none"}}))
    corpus = write_run(tmp_path, "raw-corpus", "continuous", "mfcc-features", 20800.0, tasks)
    report_file = corpus / "eval" / "dasb.json"
    report_file.write_text(
        json.dumps(
            report | {"input_options": {"cmvn": "none"}, "input_settings": {"input_norm": "corpus"}}
        )
    )
    again = write_run(
        tmp_path / "other", "continuous", "continuous", "mfcc-features", 20800.0, tasks
    )
    table = compare_runs([utterance, raw, corpus, again], tmp_path / "out")["markdown"]
    labels = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:6]]
    assert labels == [
        "continuous: mfcc-features",
        "continuous: mfcc-features (cmvn=none)",
        "continuous: mfcc-features (cmvn=none, input_norm=corpus)",
        "continuous: mfcc-features [continuous]",
    ]


def write_config(run, seed, steps=500, cpu_threads=None):
    """The run's final/mmllm_pretrain.yaml: what setup_and_seed groups by."""
    import yaml

    (run / "final").mkdir()
    config = {
        "run_dir": str(run),
        "model": {"hidden_size": 256},
        "train": {"steps": steps, "seed": seed, "cpu_threads": cpu_threads},
    }
    (run / "final" / "mmllm_pretrain.yaml").write_text(yaml.safe_dump(config))


def test_seeds_of_one_setup_become_one_row_of_means(tmp_path):
    def run(name, ks, sid, seed, **config):
        path = write_run(
            tmp_path, name, "discrete", "mfcc-kmeans", 448.0, {"ks": {"accuracy": ks}, "sid": sid}
        )
        write_config(path, seed, **config)
        return path

    seed0 = run("s0", 0.5, {"accuracy": 0.4}, 0, cpu_threads=1)  # bookkeeping differs: same setup
    seed1 = run("s1", 0.7, {"accuracy": 0.4}, 1)
    longer = run("long", 0.9, {"accuracy": 0.1}, 0, steps=1000)  # another budget
    again = run("again", 0.6, {"accuracy": 0.3}, 0, steps=1000)  # the same seed again
    report = compare_runs([seed0, seed1, longer, again], tmp_path / "out")
    lines = report["markdown"].splitlines()
    # mean 60.0, sample sd sqrt(2 * 0.1^2 / 1) = 14.1
    assert lines[2] == "| mfcc-kmeans (2 seeds) | 0.45 kbps | 60.0 ± 14.1 | **40.0** ± 0.0 |"
    # another setup of the same input is named by its run, though "(2 seeds)" sets them apart
    assert lines[3] == "| mfcc-kmeans [long] | 0.45 kbps | **90.0** | 10.0 |"
    assert lines[4] == "| mfcc-kmeans [again] | 0.45 kbps | 60.0 | 30.0 |"
    row = json.loads((tmp_path / "out" / "comparison.json").read_text())["runs"][
        "mfcc-kmeans (2 seeds)"
    ]
    assert row["seeds"] == [0, 1] and row["runs"] == [str(seed0), str(seed1)]
    assert row["per_seed"] == {"ks": [0.5, 0.7], "sid": [0.4, 0.4]}
    assert row["sd"] == {"ks": pytest.approx(0.1 * 2**0.5), "sid": 0.0}


def test_plot_labels_drop_the_options_every_row_shares():
    from mmllm.eval.compare import plot_labels

    rows = [
        "mel-rvq (audio_input_rms=1.0, griffin_lim_iters=32)",
        "mel-rvq (audio_input_rms=1.0, griffin_lim_iters=32) (summed)",
        "mel-rvq (audio_input_rms=1.0, griffin_lim_iters=64) [delay]",
    ]
    assert plot_labels(rows) == [
        "mel-rvq (griffin_lim_iters=32)",
        "mel-rvq (griffin_lim_iters=32) (summed)",
        "mel-rvq (griffin_lim_iters=64) [delay]",
    ]
    assert plot_labels(rows[:2]) == ["mel-rvq", "mel-rvq (summed)"]
    assert plot_labels(["continuous: mfcc (cmvn=none)", "mfcc-kmeans"]) == [
        "continuous: mfcc (cmvn=none)",
        "mfcc-kmeans",
    ]
