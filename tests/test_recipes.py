"""Every recipe in configs/recipes runs as written, on tiny random stand-ins of its weights.

The stand-ins are the same transformers classes as the named checkpoints (a Llama for
SmolLM2, a Qwen2 for Qwen2.5, both with tied embeddings like the real ones; EnCodec, DAC,
Mimi, WavLM; the `speechtokenizer` package's model), saved into a Hugging Face hub cache
under the real hub ids, so the recipe files are used unchanged with the hub offline. The
corpus stand-in is SynthDASB tiny's ASR task (LibriSpeech converts to an ASR task). Each
recipe trains 2 steps under `accelerate launch` with its own DeepSpeed stage and bf16,
exports, and the result is prompted for ASR.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import scramble, tiny_dac, tiny_encodec, tiny_llama, tiny_mimi, tiny_ssl_model

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))
BIN = Path(sys.executable).parent
COMMIT = "0" * 40


def hub_snapshot(cache: Path, repo: str) -> Path:
    """The snapshot folder of `repo` in a hub cache (what from_pretrained finds offline)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


@pytest.fixture(scope="module")
def stand_ins(synth_tiny, tmp_path_factory) -> dict:
    """A hub cache holding a stand-in for every weight the recipes name, the fake
    `speechtokenizer` package, and a LibriSpeech-like corpus (ASR rows only)."""
    from transformers import AutoTokenizer

    from mmllm.data.text_tokenizer import synth_texts, train_text_tokenizer

    root = tmp_path_factory.mktemp("recipes")
    cache = root / "hub"
    text_tokenizer = root / "text-tokenizer"
    train_text_tokenizer(synth_texts(synth_tiny), text_tokenizer, vocab_size=400, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(text_tokenizer)
    for repo, family in (("HuggingFaceTB/SmolLM2-135M", "llama"), ("Qwen/Qwen2.5-0.5B", "qwen2")):
        snapshot = hub_snapshot(cache, repo)
        lm = tiny_llama(
            len(tokenizer), 32, 2, 4, 2, family=family,
            tie_word_embeddings=True,  # SmolLM2-135M and Qwen2.5-0.5B tie them
            max_position_embeddings=4096,
        )  # fmt: skip
        lm.save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)
    codecs = {
        "facebook/encodec_24khz": tiny_encodec,
        "descript/dac_16khz": lambda: tiny_dac(n_codebooks=12),  # as the 16 kHz weights
        "kyutai/mimi": tiny_mimi,
    }
    for index, (repo, build) in enumerate(codecs.items()):
        torch.manual_seed(index)
        scramble(build(), seed=index).save_pretrained(hub_snapshot(cache, repo))
    wavlm = tiny_ssl_model("wavlm", num_layers=24)  # DASB's layers go up to 23
    wavlm.save_pretrained(hub_snapshot(cache, "microsoft/wavlm-large"))
    speechtokenizer = hub_snapshot(cache, "fnlp/SpeechTokenizer") / "speechtokenizer_hubert_avg"
    speechtokenizer.mkdir()
    (speechtokenizer / "config.json").write_text("{}")
    (speechtokenizer / "SpeechTokenizer.pt").write_bytes(b"")
    package = root / "packages" / "speechtokenizer"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from tiny_models import FakeSpeechTokenizer as SpeechTokenizer  # noqa: F401\n"
    )
    corpus = librispeech_shaped(synth_tiny, root)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(root / "packages"), str(ROOT / "tests")]),
        "OMP_NUM_THREADS": "2",
    }
    env.pop("MMLLM_FAULT", None)
    return {"root": root, "corpus": corpus, "env": env}


def librispeech_shaped(synth_tiny: Path, root: Path) -> Path:
    """SynthDASB tiny's ASR rows as LibriSpeech's parquet export has them (upper-case text,
    integer speaker and chapter, no word alignments), converted by `mmllm convert` into the
    task folder pretraining reads: <corpus>/asr."""
    import pyarrow as pa
    from datasets import Audio, Dataset, DatasetInfo, Features, Value

    from mmllm.cli.corpus import convert
    from mmllm.corpus.reader import load_task

    features = Features(
        {
            "audio": Audio(),
            "text": Value("string"),
            "speaker_id": Value("int64"),
            "chapter_id": Value("int64"),
            "id": Value("string"),
        }
    )
    source = root / "librispeech_parquet" / "data"
    source.mkdir(parents=True)
    for split, name in (("train", "train.100"), ("valid", "validation"), ("test", "test")):
        rows = load_task(synth_tiny, "asr")[split]
        speakers = sorted(set(rows["speaker"]))
        columns = {
            "audio": rows.data.column("audio").to_pylist(),
            "text": [text.upper() for text in rows["text"]],
            "speaker_id": [speakers.index(s) for s in rows["speaker"]],
            "chapter_id": [1] * len(rows),
            "id": [f"{speakers.index(s)}-1-{i:04d}" for i, s in enumerate(rows["speaker"])],
        }
        table = pa.Table.from_pydict(columns, schema=features.arrow_schema)
        Dataset(table, info=DatasetInfo(features=features)).to_parquet(
            str(source / f"{name}-00000-of-00001.parquet")
        )
    corpus = root / "librispeech"
    splits = ["splits.train=train.100", "splits.valid=validation", "splits.test=test"]
    path = f"path={source.parent}"
    assert convert(["name=librispeech", path, *splits, "--out", str(corpus / "asr")]) == 0
    assert not any(load_task(corpus, "asr")["train"]["words"])  # no alignments, as the real one
    return corpus


def test_recipes_cover_the_named_bases_tokenizers_and_modes():
    recipes = {path.stem: yaml.safe_load(path.read_text()) for path in RECIPES}
    bases = {r["model"]["base"] for r in recipes.values()}
    assert bases == {"HuggingFaceTB/SmolLM2-135M", "Qwen/Qwen2.5-0.5B"}
    tokenizers = {Path(r["tokenizers"]["input"]).stem for r in recipes.values()}
    assert tokenizers == {"encodec-6kbps", "dac-16khz", "mimi-8", "wavlm-kmeans", "speechtokenizer"}
    modes = {
        (r["model"].get("lora") is not None, r["train"]["deepspeed"]) for r in recipes.values()
    }
    assert modes == {
        (False, "configs/deepspeed/zero2.json"),
        (True, "configs/deepspeed/zero3.json"),
    }
    launchers = {p.stem for p in (ROOT / "configs" / "accelerate").glob("?x8-zero?.yaml")}
    assert launchers == {
        "1x8-zero2",
        "1x8-zero3",
        "2x8-zero2",
        "2x8-zero3",
    }  # test_config checks them


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_recipe_trains_exports_and_answers(recipe, stand_ins, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    cfg = yaml.safe_load(recipe.read_text())
    overrides = [
        f"run_dir={run_dir}",
        f"corpus.path={stand_ins['corpus']}",
        f"tokenizers.cache_dir={tmp_path / 'tokens'}",
        "tokenizers.fit_max_frames=3000",
        "train.steps=2",
        "train.micro_batch_size=2",
        "train.grad_accum=1",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "data.eval_per_source=4",
        "optim.warmup_steps=1",
    ]
    if "kmeans" in cfg["tokenizers"]["input"]:  # fitted here, into the run's own folder
        overrides.append(
            f"tokenizers.input_overrides=[codebook_size=16, centroids={tmp_path / 'centroids'}]"
        )
    command = [str(BIN / "accelerate"), "launch", "--num_processes", "1", "train/pretrain.py"]
    command += ["--config", str(recipe), *overrides]
    result = subprocess.run(
        command, cwd=ROOT, env=stand_ins["env"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final = run_dir / "final"
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s][-1] == 2
    model = AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in name for name, _ in model.named_parameters())
    vocab = json.loads((final / "mmllm_vocab.json").read_text())
    assert model.get_input_embeddings().weight.shape[0] == vocab["size"]
    wav = write_test_wav(tmp_path)
    answer = subprocess.run(
        [sys.executable, "-m", "mmllm", "generate", "--checkpoint", str(final), "asr", str(wav)],
        cwd=ROOT,
        env=stand_ins["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert answer.stdout.strip()  # a transcript (2 steps: not a good one)


def write_test_wav(tmp_path: Path) -> Path:
    import numpy as np

    from mmllm.audio.io import write_wav

    path = tmp_path / "speech.wav"
    tone = 0.1 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 220).astype(np.float32)
    write_wav(path, tone, 16000)
    return path


def test_a_corpus_without_word_times_refuses_the_word_timed_sources(stand_ins, tmp_path):
    """LibriSpeech has no word alignments: a mixture with spans cut at word times is refused
    before anything is built, naming the key to change."""
    command = [sys.executable, "train/pretrain.py", "--config", str(RECIPES[0])]
    command += [f"run_dir={tmp_path / 'run'}", f"corpus.path={stand_ins['corpus']}"]
    command += ["data.mixture={asr: 1, asr_spans: 0.5}"]
    result = subprocess.run(
        command, cwd=ROOT, env=stand_ins["env"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "give data.mixture.asr_spans weight 0" in result.stdout + result.stderr
