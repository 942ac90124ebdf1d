"""The real CLI, `train/pretrain.py`, on SynthDASB tiny with a 0.05M-parameter Llama.

Plain, DeepSpeed ZeRO-2 (launcher) and ZeRO-3 (config) runs give the same losses; 2-process
DDP (torchrun) gives the 1-process loss on the same global batch; a run killed and resumed
gives the same losses step for step; a kill during a checkpoint save keeps the last good one;
bad configs fail before training, naming the problem.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mmllm.data.cache import CachedSplit

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


TINY_VOCODER = [
    "steps=3",
    "hidden_size=16",
    "intermediate_size=32",
    "num_layers=1",
    "batch_size=2",
    "warmup_steps=1",
    "checkpoint_every=2",
]


def base_config(tiny_tokens: dict, run_dir: Path) -> dict:
    return {
        "run_dir": str(run_dir),
        "corpus": {"path": str(tiny_tokens["corpus"]), "synth_size": None},
        "tokenizers": {
            "input": str(ROOT / "configs/tokenizers/mfcc-kmeans.yaml"),
            "input_overrides": tiny_tokens["overrides"],
            "cache_dir": str(tiny_tokens["cache_dir"]),
            # the main job's vocoder step, at a test's size (trained once, by content)
            "vocoder_overrides": TINY_VOCODER,
            "vocoder_dir": str(tiny_tokens["cache_dir"].parent / "vocoders"),
        },
        "model": {
            "text_vocab_size": 384,
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 64,
        },
        "data": {"block_size": 1024, "eval_per_source": 4},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "train": {
            "steps": 6,
            "micro_batch_size": 2,
            "grad_accum": 2,
            "eval_every": 3,
            "checkpoint_every": 2,
            "deepspeed": None,
        },
    }


def run_pretrain(
    tiny_tokens, run_dir, overrides=(), launcher="python", fault=None, check=True
) -> subprocess.CompletedProcess:
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    config = run_dir.parent / f"{run_dir.name}.yaml"
    config.write_text(yaml.safe_dump(base_config(tiny_tokens, run_dir)))
    script = ["train/pretrain.py", "--config", str(config), *overrides]
    command = {
        "python": [sys.executable, *script],
        "accelerate": [str(BIN / "accelerate"), "launch", "--num_processes", "1", *script],
        "accelerate-zero2": [
            str(BIN / "accelerate"),
            "launch",
            "--use_deepspeed",
            "--zero_stage",
            "2",
            "--num_processes",
            "1",
            *script,
        ],
        "torchrun-2": [str(BIN / "torchrun"), "--nproc_per_node", "2", *script],
    }[launcher]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if launcher == "torchrun-2" else "2"}
    env.pop("MMLLM_FAULT", None)
    if fault:
        env["MMLLM_FAULT"] = fault
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def losses(run_dir) -> list[float]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    return [r["loss"] for r in records]


@pytest.fixture(scope="module")
def plain_run(tiny_tokens, tmp_path_factory):
    """One uninterrupted single-process run (no DeepSpeed): the reference."""
    run_dir = tmp_path_factory.mktemp("pretrain") / "plain"
    result = run_pretrain(tiny_tokens, run_dir)
    return run_dir, result


def test_plain_run_trains_evaluates_and_exports(plain_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmllm.data.vocab import MultimodalVocab

    run_dir, result = plain_run
    curve = losses(run_dir)
    assert len(curve) == 6 and curve[-1] < curve[0] - 0.05
    summary = json.loads((run_dir / "eval_summary.json").read_text())
    assert set(summary) == {"asr", "ks", "ic", "sid", "sv", "er", "se", "ss", "tts"} | {
        "text",
        "audio",
        "interleaved",
    }
    assert all(row["final"] < row["step_0"] for row in summary.values()), summary
    assert "held-out loss per source" in result.stdout and "DID NOT FALL" not in result.stdout
    evals = [json.loads(x) for x in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 3, 6]
    assert (run_dir / "loss_curves.png").stat().st_size > 10_000
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    # the export loads with plain transformers, and the vocab comes back from it
    final = run_dir / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    vocab = MultimodalVocab.load(final)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == vocab.size
    assert tokenizer.convert_tokens_to_ids("<|mfcc-kmeans_k0_31|>") == vocab.audio_id(
        "mfcc-kmeans", 0, 31
    )
    # keep_checkpoints=2: steps 4 and 6 remain, `latest` names step 6
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000004", "step-000006"]
    assert (checkpoints / "latest").read_text().strip() == "step-000006"


def test_the_run_speaks_and_prints_prompts_that_work(plain_run, capsys):
    """mfcc-kmeans cannot decode itself: the run trained a token vocoder, packaged it with
    the checkpoint, and ended with prompt commands on test clips it wrote; each of them
    runs (ASR prints a transcript, KS a line per clip, TTS writes a WAV)."""
    import shlex

    from mmllm.cli import main

    run_dir, result = plain_run
    packaged = run_dir / "final" / "tokenizers"
    assert (packaged / "output-vocoder" / "vocoder.safetensors").is_file()
    commands = [
        line.split("#")[0].split() if "#" in line else shlex.split(line)
        for line in result.stdout.splitlines()
        if line.strip().startswith("mmllm generate")
    ]
    assert [c[4] for c in commands] == ["asr", "ks", "ic", "tts"]
    for command in commands:
        capsys.readouterr()
        assert main([*command[1:], "--max-new-tokens", "12"]) == 0, command
        out = capsys.readouterr().out.strip().splitlines()
        if command[4] == "ks":
            assert len(out) == 4 and all("\t" in line for line in out)
        elif command[4] == "tts":
            assert out[0].startswith("wrote ") and Path(command[-1]).stat().st_size > 1000
        else:
            assert len(out) == 1


def test_deepspeed_zero2_and_zero3_match_plain(plain_run, tiny_tokens, tmp_path):
    """ZeRO-2 from the launcher (`accelerate launch --use_deepspeed --zero_stage 2`), ZeRO-3
    from the pretrain config under a bare `accelerate launch`: same losses as no DeepSpeed."""
    from transformers import AutoModelForCausalLM

    reference = losses(plain_run[0])
    run_pretrain(tiny_tokens, tmp_path / "zero2", launcher="accelerate-zero2")
    run_pretrain(
        tiny_tokens,
        tmp_path / "zero3",
        ["train.deepspeed=configs/deepspeed/zero3.json", "train.checkpoint_every=3"],
        launcher="accelerate",
    )
    for name in ("zero2", "zero3"):
        assert losses(tmp_path / name) == pytest.approx(reference, rel=1e-4), name
    # ZeRO-3 keeps shards in the module; the export must hold the gathered weights
    plain = AutoModelForCausalLM.from_pretrained(plain_run[0] / "final")
    zero3 = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3" / "final")
    ids = torch.arange(40)[None]
    torch.testing.assert_close(zero3(ids).logits, plain(ids).logits, rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def pretrained_base(plain_run, tmp_path_factory) -> Path:
    """A "pretrained" base as a user brings one: a tiny random Llama and its text tokenizer
    saved with save_pretrained to a local directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    base = tmp_path_factory.mktemp("base") / "tiny-llama"
    tokenizer = AutoTokenizer.from_pretrained(plain_run[0] / "text_tokenizer")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_pretrained_base_under_zero3_matches_plain_and_exports(
    pretrained_base, tiny_tokens, tmp_path, lora
):
    """ZeRO-3 loads a pretrained base sharded (empty parameters): resizing it read 0 rows
    ("model has 0 embedding rows"); with LoRA the merge ran on shards. The ZeRO-3 run must
    train like the same run without DeepSpeed and export the same model."""
    from transformers import AutoModelForCausalLM

    common = [f"model.base={pretrained_base}", "train.steps=3", "train.checkpoint_every=0"]
    if lora:
        common.append("model.lora={r: 4, alpha: 8}")
    run_pretrain(tiny_tokens, tmp_path / "plain", common)
    # every parameter partitioned, as a real model's are (tiny ones stay whole by default)
    ds = json.loads((ROOT / "configs/deepspeed/zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3.json").write_text(json.dumps(ds))
    zero3 = [f"train.deepspeed={tmp_path / 'zero3.json'}"]
    run_pretrain(tiny_tokens, tmp_path / "zero3", [*common, *zero3], launcher="accelerate")
    assert losses(tmp_path / "zero3") == pytest.approx(losses(tmp_path / "plain"), rel=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain" / "final")
    sharded = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3" / "final")
    ids = torch.arange(60)[None]
    torch.testing.assert_close(sharded(ids).logits, plain(ids).logits, rtol=1e-3, atol=1e-3)


def test_two_process_ddp_matches_one_process(tiny_tokens, tmp_path):
    """torchrun with 2 processes x 1 block per micro-batch == 1 process x 2 blocks, both with
    2 lanes: the same global batch of 4 blocks per step (each process renders only its own
    lane), so the same step-1 loss (and close ones after)."""
    one = tmp_path / "one"
    two = tmp_path / "two"
    common = ["train.steps=3", "train.checkpoint_every=0", "train.eval_every=0", "data.lanes=2"]
    run_pretrain(tiny_tokens, one, [*common, "train.micro_batch_size=2"])
    run_pretrain(tiny_tokens, two, [*common, "train.micro_batch_size=1"], launcher="torchrun-2")
    single, double = losses(one), losses(two)
    assert double[0] == pytest.approx(single[0], rel=1e-6)
    assert double == pytest.approx(single, rel=1e-4)


def test_two_process_ddp_with_summed_input_and_text_only_batches(tiny_tokens, tmp_path):
    """A micro-batch of text LM documents only never calls the input's mixing module; DDP
    without find_unused_parameters stopped there ("Expected to have finished reduction")."""
    run_dir = tmp_path / "summed-ddp"
    overrides = [
        "audio_input=summed",
        "data.mixture={text: 2, ks: 1}",
        "train.steps=3",
        "train.micro_batch_size=1",
        "train.checkpoint_every=0",
        "train.eval_every=0",
    ]
    run_pretrain(tiny_tokens, run_dir, overrides, launcher="torchrun-2")
    assert len(losses(run_dir)) == 3


def test_two_process_ddp_with_delay_heads_and_text_only_batches(tiny_tokens, tmp_path):
    """The delay heads run after the forward pass (on the states the loss keeps): DDP must
    still sync their gradients, also for micro-batches of text only, and match one process."""
    overrides = [
        "data.pattern=delay",
        f"tokenizers.input={ROOT / 'configs/tokenizers/mel-rvq.yaml'}",
        f"tokenizers.input_overrides=[num_codebooks=2, codebook_size=16, centroids={tmp_path / 'rvq'}]",
        f"tokenizers.cache_dir={tmp_path / 'tokens'}",
        "tokenizers.fit_max_frames=2000",
        "data.mixture={text: 2, tts: 1}",
        "data.lanes=2",
        "train.steps=3",
        "train.checkpoint_every=0",
        "train.eval_every=0",
    ]
    run_pretrain(tiny_tokens, tmp_path / "one", [*overrides, "train.micro_batch_size=2"])
    two = [*overrides, "train.micro_batch_size=1"]
    run_pretrain(tiny_tokens, tmp_path / "two", two, launcher="torchrun-2")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)


def test_resume_after_kill_matches_uninterrupted_run(plain_run, tiny_tokens, tmp_path):
    """Killed (SIGKILL) right after step 3, the last checkpoint is step 2; rerunning resumes
    there and every logged loss equals the run that never stopped."""
    run_dir = tmp_path / "resumed"
    killed = run_pretrain(tiny_tokens, run_dir, fault="after-step:3", check=False)
    assert killed.returncode != 0
    assert len(losses(run_dir)) == 3
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000002"
    resumed = run_pretrain(tiny_tokens, run_dir)
    assert "resumed from" in resumed.stdout and "step 2" in resumed.stdout
    assert losses(run_dir) == losses(plain_run[0])
    # the logs of a killed-and-resumed run equal those of the run that never stopped, and a
    # rerun of the finished run adds no duplicate entries
    evals = (run_dir / "evals.jsonl").read_text()
    assert [json.loads(x)["step"] for x in evals.splitlines()] == [
        json.loads(x)["step"] for x in (plain_run[0] / "evals.jsonl").read_text().splitlines()
    ]
    metrics = (run_dir / "metrics.jsonl").read_text()
    run_pretrain(tiny_tokens, run_dir)
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert [json.loads(x)["step"] for x in (run_dir / "evals.jsonl").read_text().splitlines()] == [
        json.loads(x)["step"] for x in evals.splitlines()
    ]


def test_resume_may_change_run_length_but_not_the_model(plain_run, tiny_tokens, tmp_path):
    """train.steps and the eval / checkpoint intervals may change on resume (it refused every
    change before); a change of the model or the data is refused, naming what differs."""
    run_dir = tmp_path / "longer"
    run_pretrain(tiny_tokens, run_dir, ["train.steps=4"])
    resumed = run_pretrain(tiny_tokens, run_dir, ["train.eval_every=2"])  # steps: 6
    assert "resumed from" in resumed.stdout and "step 4" in resumed.stdout
    assert len(losses(run_dir)) == 6
    assert losses(run_dir)[:4] == losses(plain_run[0])[:4]  # the same data order
    refused = run_pretrain(tiny_tokens, run_dir, ["model.hidden_size=64"], check=False)
    assert refused.returncode == 2 and "differs in config_hash" in refused.stdout + refused.stderr


def test_kill_during_checkpoint_save_keeps_last_good_one(plain_run, tiny_tokens, tmp_path):
    run_dir = tmp_path / "killed-in-save"
    killed = run_pretrain(tiny_tokens, run_dir, fault="checkpoint-save:2", check=False)
    assert killed.returncode != 0
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-000002"
    assert (checkpoints / ".tmp-step-000004").is_dir()  # the save that was cut short
    assert not (checkpoints / "step-000004").exists()
    run_pretrain(tiny_tokens, run_dir)
    assert not (checkpoints / ".tmp-step-000004").exists()
    assert losses(run_dir) == losses(plain_run[0])


def test_lora_run_trains_and_exports_merged(tiny_tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "lora"
    result = run_pretrain(  # the default launch: DeepSpeed ZeRO-2 (crashed at step 1 before)
        tiny_tokens,
        run_dir,
        ["model.lora={r: 4, alpha: 8}", "train.checkpoint_every=0", "optim.lr=3e-2"]
        + ["train.deepspeed=configs/deepspeed/zero2.json"],
        launcher="accelerate",
    )
    assert "DeepSpeed configs/deepspeed/zero2.json" in result.stdout
    assert "trainable)" in result.stdout
    curve = losses(run_dir)
    assert curve[-1] < curve[0]
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert not any("lora" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.block_size=64"], "data.block_size 64: document"),
        (["tokenizers.input_overrides=[name=nope]"], "unknown tokenizer 'nope'"),
        (["data.mixture={asr: 1, podcasts: 1}"], "unknown source(s) ['podcasts']"),
        (["optim.lr=-1"], "optim.lr and optim.mixing_lr_scale: must be > 0, got -1"),
        (["model.lora={r: 16"], "command-line override 'model.lora={r: 16': invalid YAML"),
        (
            ["train.deepspeed=configs/deepspeed/zero9.json"],
            "zero9.json: DeepSpeed config not found",
        ),
    ],
)
def test_bad_config_fails_before_training(tiny_tokens, tmp_path, overrides, message):
    result = run_pretrain(tiny_tokens, tmp_path / "bad", overrides, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_vocab_mismatch_with_cache_fails_before_training(plain_run, tiny_tokens, tmp_path):
    """A base checkpoint whose audio block differs from the token cache is refused."""
    base = tmp_path / "base"
    shutil.copytree(plain_run[0] / "final", base)
    vocab = json.loads((base / "mmllm_vocab.json").read_text())
    vocab["audio"][0]["codebook_size"] = 40  # a checkpoint made for a 40-unit tokenizer
    vocab["size"] += 8
    (base / "mmllm_vocab.json").write_text(json.dumps(vocab))
    result = run_pretrain(tiny_tokens, tmp_path / "run", [f"model.base={base}"], check=False)
    assert result.returncode == 2
    assert "vocab mismatch" in result.stdout
    assert "1 x 40 codes, the token cache has 1 x 32" in result.stdout


def train_until_losses_fall(tiny_tokens, run_dir, overrides) -> None:
    """Train with `overrides`; the training loss fell, and so did the held-out loss of
    every source of their `data.mixture=` entry."""
    run_pretrain(tiny_tokens, run_dir, overrides)
    curve = losses(run_dir)
    assert curve[-1] < curve[0] - 0.05
    summary = json.loads((run_dir / "eval_summary.json").read_text())
    mixture = yaml.safe_load(next(o for o in overrides if o.startswith("data.mixture="))[13:])
    assert set(summary) == set(mixture)
    assert all(row["fell"] for row in summary.values()), summary


def evaluate_run(run_dir: Path, tasks: str, out: Path) -> dict:
    """eval/dasb.py on <run_dir>/final, 3 rows per task; its dasb.json."""
    command = [sys.executable, "eval/dasb.py", "--checkpoint", str(run_dir / "final")]
    command += ["--tasks", tasks, "--limit", "3", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "dasb.json").read_text())


def continuous_input(tiny_tokens: dict) -> list[str]:
    """Overrides for the continuous baseline: mfcc-features in, the tiny mfcc-kmeans codes out."""
    return [
        "audio_input=continuous",
        f"tokenizers.input={ROOT / 'configs/tokenizers/mfcc-features.yaml'}",
        "tokenizers.input_overrides=[]",
        f"tokenizers.output={ROOT / 'configs/tokenizers/mfcc-kmeans.yaml'}",
        f"tokenizers.output_overrides={json.dumps([str(x) for x in tiny_tokens['overrides']])}",
    ]


def test_continuous_input_run_trains_and_exports_projector(tiny_tokens, tmp_path):
    """audio_input: continuous with mfcc-features in and mfcc-kmeans codes out."""
    from mmllm.modeling.continuous import load_projector

    run_dir = tmp_path / "continuous"
    overrides = [
        *continuous_input(tiny_tokens),
        "data.mixture={asr: 1, ks: 1, sid: 1, sv: 1, tts: 1, se: 1, text: 0.25}",
        "train.checkpoint_every=0",
    ]
    train_until_losses_fall(tiny_tokens, run_dir, overrides)
    projector = load_projector(run_dir / "final")
    assert projector.config["in_dim"] == 26
    # input_norm corpus (the default): statistics of the training rows, saved with the
    # projector. mfcc-features are normalised per utterance (mean 0, sd 1 in every
    # utterance), so over all training rows every dim has mean 0 and sd 1 too.
    assert projector.input_norm == "corpus"
    torch.testing.assert_close(projector.feature_mean, torch.zeros(26), atol=1e-2, rtol=0)
    torch.testing.assert_close(projector.feature_std, torch.ones(26), atol=1e-2, rtol=0)
    assert projector.config["input_norm"] == "corpus"
    vocab = json.loads((run_dir / "final" / "mmllm_vocab.json").read_text())
    assert [block["tokenizer"] for block in vocab["audio"]] == ["mfcc-kmeans"]
    # evaluation and prompting read the features the same way
    report = evaluate_run(run_dir, "ks,sv,asr,se", tmp_path / "eval")
    assert report["audio_input"] == "continuous" and report["input_tokenizer"] == "mfcc-features"
    assert report["input_settings"] == {"input_norm": "corpus", "output_rms": 1.0}
    assert set(report["tasks"]) == {"ks", "sv", "asr", "se"}


def test_continuous_input_trains_in_bf16_under_deepspeed(tiny_tokens, tmp_path):
    """The default launch (DeepSpeed ZeRO-2) in bf16 casts the projector with the LM and
    applies no autocast; it died at the first forward ("mat1 and mat2 must have the same
    dtype") before the projector ran in the dtype of its weights."""
    from mmllm.modeling.continuous import load_projector

    run_dir = tmp_path / "continuous-bf16"
    overrides = [
        *continuous_input(tiny_tokens),
        "data.mixture={asr: 1, ks: 1, tts: 1}",
        "train.precision=bf16",
        "train.steps=2",
        "train.checkpoint_every=0",
        "train.deepspeed=configs/deepspeed/zero2.json",
    ]
    result = run_pretrain(tiny_tokens, run_dir, overrides, launcher="accelerate")
    assert "torch.bfloat16" in result.stdout and len(losses(run_dir)) == 2
    projector = load_projector(run_dir / "final")
    assert projector.feature_mean.dtype == torch.float32


def test_ssl_layer_features_train_their_layer_weights_and_evaluate(tiny_tokens, tmp_path):
    """audio_input: continuous on hubert-features (a tiny random HuBERT saved locally, 3
    layers): the cache is built from the model, the projector learns a weight per layer,
    and evaluation reads the same features back."""
    from tiny_models import tiny_ssl_model

    from mmllm.modeling.continuous import codebook_weights, load_projector

    tiny_ssl_model("hubert").save_pretrained(tmp_path / "hubert")
    run_dir = tmp_path / "continuous-hubert"
    overrides = [
        "audio_input=continuous",
        f"tokenizers.input={ROOT / 'configs/tokenizers/hubert-features.yaml'}",
        f"tokenizers.input_overrides=[weights={tmp_path / 'hubert'}, 'layers=[1, 2, 3]']",
        f"tokenizers.output={ROOT / 'configs/tokenizers/mfcc-kmeans.yaml'}",
        f"tokenizers.output_overrides={json.dumps([str(x) for x in tiny_tokens['overrides']])}",
        "continuous.stack=2",
        "data.mixture={ks: 1, sid: 1, tts: 1}",
        "train.checkpoint_every=0",
    ]
    train_until_losses_fall(tiny_tokens, run_dir, overrides)
    projector = load_projector(run_dir / "final")
    assert projector.config["in_dim"] == 2 * 3 * 32 and projector.config["layer_dim"] == 32
    weights = codebook_weights(run_dir / "final")
    assert list(weights) == ["layer 1", "layer 2", "layer 3"]
    assert sum(weights.values()) == pytest.approx(1)
    assert max(abs(w - 1 / 3) for w in weights.values()) > 1e-4  # trained away from uniform
    report = evaluate_run(run_dir, "ks", tmp_path / "eval")
    assert report["input_tokenizer"] == "hubert-features" and report["tasks"]["ks"]["rows"] == 3


def test_continuous_input_refuses_audio_lm_documents(tiny_tokens, tmp_path):
    result = run_pretrain(
        tiny_tokens,
        tmp_path / "bad",
        ["audio_input=continuous", "tokenizers.input=configs/tokenizers/mfcc-features.yaml"],
        check=False,
    )
    assert result.returncode == 2
    assert "['audio', 'interleaved'] predict input audio as tokens" in result.stderr


def test_deduplicated_input_trains_evaluates_and_refuses_word_time_sources(tiny_tokens, tmp_path):
    """mfcc-kmeans with `deduplicate`: its own cache beside the plain one in the same
    cache_dir (named by content), shorter documents, losses fall, and evaluation encodes
    prompts the same way; sources cut at word times are refused."""
    dedup = [
        f"tokenizers.input_overrides={json.dumps([*tiny_tokens['overrides'], 'deduplicate=true'])}",
    ]
    bad = run_pretrain(
        tiny_tokens, tmp_path / "bad", [*dedup, "data.mixture={asr: 1, asr_spans: 1}"], check=False
    )
    assert bad.returncode == 2
    assert "sources ['asr_spans'] cut speech at word times" in bad.stdout + bad.stderr
    run_dir = tmp_path / "dedup"
    train_until_losses_fall(
        tiny_tokens,
        run_dir,
        [*dedup, "data.mixture={asr: 1, ks: 1, audio: 0.5}", "train.checkpoint_every=0"],
    )
    caches = sorted(tiny_tokens["cache_dir"].glob("mfcc-kmeans-*"))
    assert len(caches) == 2 and tiny_tokens["cache"] in caches
    (dedup_cache,) = set(caches) - {tiny_tokens["cache"]}
    card = json.loads((dedup_cache / "cache.json").read_text())
    assert card["tokenizer_properties"]["deduplicated"] is True
    frames = [
        int(CachedSplit(d / "asr" / "train").entries["frames"].sum())
        for d in (dedup_cache, tiny_tokens["cache"])
    ]
    assert frames[0] < frames[1]  # runs collapsed
    assert set(evaluate_run(run_dir, "asr,ks", tmp_path / "eval")["tasks"]) == {"asr", "ks"}


def test_summed_input_run_trains_exports_loads_and_generates(tiny_tokens, tmp_path, capsys):
    """audio_input: summed on a 2-codebook mel-rvq (fitted here): train, export the codebook
    weights, load the checkpoint, evaluate and prompt it."""
    from mmllm.audio.io import write_wav
    from mmllm.cli.evaluate import generate as main
    from mmllm.eval.dasb import evaluate_checkpoint
    from mmllm.eval.prompting import Checkpoint, build_prompt
    from mmllm.modeling.continuous import CodebookSum, ContinuousInputLM, codebook_weights

    run_dir = tmp_path / "summed"
    overrides = [
        "audio_input=summed",
        f"tokenizers.input={ROOT / 'configs/tokenizers/mel-rvq.yaml'}",
        f"tokenizers.input_overrides=[num_codebooks=2, codebook_size=16, centroids={tmp_path / 'rvq'}]",
        f"tokenizers.cache_dir={tmp_path / 'tokens'}",
        "tokenizers.fit_max_frames=2000",
        "data.mixture={asr: 1, ks: 1, sv: 1, tts: 1, se: 1, text: 0.25}",
        "train.checkpoint_every=0",
    ]
    train_until_losses_fall(tiny_tokens, run_dir, overrides)
    final = run_dir / "final"
    weights = list(codebook_weights(final).values())
    # trained: the two weights moved apart (their gradients are opposite), still a softmax
    assert len(weights) == 2 and abs(weights[0] - 0.5) > 1e-3 and sum(weights) == pytest.approx(1)
    vocab = json.loads((final / "mmllm_vocab.json").read_text())
    assert [(b["tokenizer"], b["num_codebooks"]) for b in vocab["audio"]] == [("mel-rvq", 2)]
    checkpoint = Checkpoint.open(final)
    model = checkpoint.load_model()
    assert isinstance(model, ContinuousInputLM) and isinstance(model.projector, CodebookSum)
    assert model.projector.embedding is model.lm.get_input_embeddings()
    assert model.projector.weights.softmax(0).tolist() == pytest.approx(weights)
    # evaluation renders the cached codes as summed rows, one placeholder per frame
    report = evaluate_checkpoint(final, ["ks", "sv", "se"], tmp_path / "eval", limit=2)
    assert report["audio_input"] == "summed" and report["input_tokenizer"] == "mel-rvq"
    assert report["tasks"]["ks"]["rows"] == 2 and 0 <= report["tasks"]["sv"]["eer"] <= 1
    # prompting from an audio file: input encoded to codes, summed; the answer is one line
    wav = np.random.default_rng(0).uniform(-0.3, 0.3, 8000).astype(np.float32)
    write_wav(tmp_path / "a.wav", wav, 16000)
    rendered = build_prompt(checkpoint, "asr", [str(tmp_path / "a.wav")])
    assert rendered.features.dtype == np.int64 and rendered.features.shape[1] == 2
    assert rendered.prompt.count(checkpoint.vocab.audio_embed_id) == len(rendered.features)
    capsys.readouterr()
    assert main(["--checkpoint", str(final), "asr", str(tmp_path / "a.wav")]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.count("\n") == 1


@pytest.mark.parametrize("pattern", ["delay", "depth"])
def test_multi_stream_pattern_trains_exports_reloads_and_speaks(
    tiny_tokens, tmp_path, capsys, pattern
):
    """data.pattern delay / depth on a 2-codebook mel-rvq (in and out): train until the
    losses fall, export the LLM with its codebook weights and audio heads, reload them,
    evaluate TTS and KS through dasb, and prompt TTS from the command line."""
    run_dir = tmp_path / pattern
    overrides = [
        f"data.pattern={pattern}",
        f"tokenizers.input={ROOT / 'configs/tokenizers/mel-rvq.yaml'}",
        f"tokenizers.input_overrides=[num_codebooks=2, codebook_size=16, centroids={tmp_path / 'rvq'}]",
        f"tokenizers.cache_dir={tmp_path / 'tokens'}",
        "tokenizers.fit_max_frames=2000",
        "model.depth.hidden_size=16",
        "model.depth.num_heads=2",
        "model.depth.num_layers=1",
        "data.mixture={ks: 1, tts: 1, audio: 0.5}",
        "train.checkpoint_every=0",
    ]
    train_until_losses_fall(tiny_tokens, run_dir, overrides)
    final = run_dir / "final"
    # ZeRO-3 (the GPU path) partitions the heads and the codebook weights: same losses, and
    # the export holds the gathered heads (depth only, to keep the suite short: its
    # transformer is what broke under ZeRO-3; delay's heads are plain Linear layers)
    if pattern == "delay":
        return check_multi_stream_export(final, pattern, tmp_path, capsys)
    zero3 = tmp_path / f"{pattern}-zero3"
    zero3_overrides = [*overrides, "train.deepspeed=configs/deepspeed/zero3.json"]
    run_pretrain(tiny_tokens, zero3, zero3_overrides, launcher="accelerate")
    assert losses(zero3) == pytest.approx(losses(run_dir), rel=1e-4)
    from safetensors.torch import load_file

    from mmllm.modeling.multicodebook import AUDIO_HEADS_WEIGHTS

    plain_heads = load_file(final / AUDIO_HEADS_WEIGHTS)
    zero3_heads = load_file(zero3 / "final" / AUDIO_HEADS_WEIGHTS)
    assert plain_heads.keys() == zero3_heads.keys()
    for name, tensor in plain_heads.items():
        torch.testing.assert_close(zero3_heads[name], tensor, rtol=1e-3, atol=1e-3)
    check_multi_stream_export(final, pattern, tmp_path, capsys)


def check_multi_stream_export(final: Path, pattern: str, tmp_path: Path, capsys) -> None:
    """The export of a delay / depth run reloads, evaluates and speaks."""
    import soundfile

    from mmllm.cli.evaluate import generate as main
    from mmllm.eval.dasb import evaluate_checkpoint
    from mmllm.eval.prompting import Checkpoint
    from mmllm.modeling.multicodebook import AUDIO_HEADS_CONFIG, MultiCodebookLM

    heads = json.loads((final / AUDIO_HEADS_CONFIG).read_text())
    assert heads["kind"] == pattern and heads["num_codebooks"] == 2
    checkpoint = Checkpoint.open(final)
    model = checkpoint.load_model()
    assert isinstance(model, MultiCodebookLM) and model.pattern == pattern
    assert model.projector.embedding is model.lm.get_input_embeddings()
    report = evaluate_checkpoint(final, ["ks", "tts"], tmp_path / "eval", limit=2)
    tts = report["tasks"]["tts"]
    assert tts["rows"] == 2 and tts["length_ratio"] > 0, tts
    speaker = checkpoint.answers["tts_speakers"][0]
    out = tmp_path / "said.wav"
    capsys.readouterr()
    assert (
        main(["--checkpoint", str(final), "tts", "yes", "--speaker", speaker, "--out", str(out)])
        == 0
    )
    assert capsys.readouterr().out.startswith("wrote ")
    audio, rate = soundfile.read(out)
    assert rate == 16000 and len(audio) > 0


def test_summed_input_over_a_features_cache_fails_clearly(tiny_tokens, tmp_path):
    overrides = [
        "audio_input=summed",
        "tokenizers.input=configs/tokenizers/mfcc-features.yaml",
        "tokenizers.input_overrides=[]",
        "data.mixture={asr: 1, ks: 1}",
    ]
    result = run_pretrain(tiny_tokens, tmp_path / "bad", overrides, check=False)
    assert result.returncode == 2
    message = "tokenizers.input: mfcc-features gives features, but audio_input 'summed' needs codes"
    assert message in result.stdout


def test_dasb_eval_skips_rows_longer_than_the_context_naming_them(plain_run, tmp_path):
    """A row whose prompt and answer exceed the model's context cannot be answered, only cut
    off: it is skipped, counted in the report and named, instead of scored as garbage."""
    from mmllm.fileio import write_manifest

    final = shutil.copytree(plain_run[0] / "final", tmp_path / "final")
    config = json.loads((final / "config.json").read_text())
    config["max_position_embeddings"] = 60  # shorter than any asr row
    (final / "config.json").write_text(json.dumps(config))
    write_manifest(final)  # an edit the user made on purpose
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "mmllm", "eval", "--checkpoint", str(final)]
    command += ["--tasks", "ks,asr", "--limit", "4", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = json.loads((out / "dasb.json").read_text())["tasks"]
    assert tasks["asr"]["rows"] == 0 and len(tasks["asr"]["skipped_too_long"]) == 4
    assert tasks["ks"]["rows"] + len(tasks["ks"]["skipped_too_long"]) == 4
    skipped = tasks["asr"]["skipped_too_long"][0]
    assert f"skipped asr row {skipped}: its prompt and answer take" in result.stdout
    assert "the model's context is 60" in result.stdout


def test_dasb_eval_on_the_trained_run(plain_run, tmp_path):
    """eval/dasb.py on the tiny run: every task scored, every generation written out."""
    out = tmp_path / "eval"
    command = [
        sys.executable,
        "eval/dasb.py",
        "--checkpoint",
        str(plain_run[0] / "final"),
        "--limit",
        "4",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "dasb.json").read_text())
    tasks = report["tasks"]
    assert set(tasks) == {"asr", "ks", "ic", "sid", "sv", "er", "se", "ss", "tts"}
    assert report["input_tokenizer"] == "mfcc-kmeans" and report["bitrate_bps"] > 0
    assert tasks["asr"]["wer"] >= 0 and tasks["asr"]["rows"] == 4
    for task in ("ks", "ic", "er", "sid"):
        assert 0 <= tasks[task]["accuracy"] <= 1 and tasks[task]["unparseable"] == 0
    assert 0 <= tasks["sv"]["eer"] <= 1
    for task in ("se", "ss", "tts"):  # decoded by the vocoder the run trained
        assert 0 <= tasks[task]["code_agreement"] <= 1 and tasks[task]["decoded"]
    assert tasks["tts"]["mcd_db"] > 0 and tasks["se"]["stoi"] > 0
    lines = [json.loads(x) for x in (out / "ks.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(x["answer"] and x["speaker"] for x in lines)
    # the per-speaker breakdown covers every row, and its counts add up to the accuracy
    per_speaker = tasks["ks"]["breakdown"]["per_speaker"]
    assert sum(g["rows"] for g in per_speaker.values()) == 4
    correct = sum(g["rows"] * g["score"] for g in per_speaker.values())
    assert correct == pytest.approx(tasks["ks"]["correct"])
    assert set(per_speaker) == {x["speaker"] for x in lines}
    for task in ("asr", "ks", "ic", "er", "sid"):
        nats = tasks[task]["audio_nats"]
        assert set(nats) == {"logp_own_audio", "logp_other_audio", "gain", "gain_per_token"}
        assert nats["gain"] == pytest.approx(
            nats["logp_own_audio"] - nats["logp_other_audio"], abs=1e-3
        )


def test_listening_compares_own_audio_with_the_next_rows(plain_run):
    """audio_nats: row i scored with its own audio against row i+1's (by hand), and no gain
    at all when every row carries the same audio."""
    from mmllm.eval.dasb import EvalData, listening, score_answers
    from mmllm.eval.prompting import Checkpoint

    checkpoint = Checkpoint.open(plain_run[0] / "final")
    data, model = EvalData(checkpoint, "test"), checkpoint.load_model().eval()
    rows = data.rows("ks", 3)
    inputs, _ = data.caches.lookups("ks", "test")
    result = listening(model, data, "ks", rows, data.prompts("ks", rows))
    by_hand = []
    for i, row in enumerate(rows):
        own = data.renderer.render(row, inputs)
        other = data.renderer.render(row, lambda key, i=i: inputs(rows[(i + 1) % 3]["id"]))
        assert own.prompt != other.prompt  # the tiny corpus's clips differ
        scores = score_answers(model, [own.prompt, other.prompt], [own.target] * 2)
        by_hand.append(float(scores[0] - scores[1]))
    assert result["gain"] == pytest.approx(sum(by_hand) / 3, abs=1e-4)
    same_audio = inputs(rows[0]["id"])
    data.caches.lookups = lambda task, split: (lambda key: same_audio, lambda key: same_audio)
    deaf = listening(model, data, "ks", rows, data.prompts("ks", rows))
    assert deaf["gain"] == 0 and deaf["logp_own_audio"] == deaf["logp_other_audio"]


@pytest.mark.parametrize(
    "input_kind, output_kind, mixture, message",
    [
        ("codes", "codes", {"asr": 1}, None),
        ("dedup", "codes", {"asr": 1, "tts": 1}, None),  # answers in the output's codes
        (
            "dedup",
            "dedup",
            {"asr": 1, "interleaved": 0.5, "asr_spans": 1},
            "sources ['asr_spans', 'interleaved'] cut speech at word times",
        ),
        (
            "codes",
            "dedup",
            {"asr": 1, "se": 1, "tts": 0},
            "mfcc-kmeans sets `deduplicate`; data.mixture sources ['se'] answer in audio",
        ),
        (
            "codes",
            "features",
            {"ks": 1, "ss": 1, "tts": 1},
            "mfcc-features gives features; data.mixture sources ['ss', 'tts'] answer in audio",
        ),
        (
            "features",
            "codes",
            {"asr": 1},
            "mfcc-features gives features, but audio_input 'discrete' needs codes",
        ),
    ],
)
def test_caches_must_fit_the_input_kind_and_the_mixture(input_kind, output_kind, mixture, message):
    """Deduplicated units have no time axis and no decoder; features are not codes."""
    from mmllm.data.mixture import CacheCard, TokenCaches
    from mmllm.pretrain.config import PretrainConfig
    from mmllm.pretrain.pipeline import check_caches_fit

    def card(kind: str) -> CacheCard:
        name = "mfcc-features" if kind == "features" else "mfcc-kmeans"
        return CacheCard(
            Path(kind), name, 1, 500, 50.0, "hash", kind == "features", 0.0, kind == "dedup"
        )

    cfg = PretrainConfig()
    cfg.data.mixture = mixture
    caches = TokenCaches(card(input_kind), card(output_kind))
    if message is None:
        check_caches_fit(cfg, caches)
    else:
        with pytest.raises(ValueError, match=re.escape(message)):
            check_caches_fit(cfg, caches)
