"""Batched constrained generation and the prompting CLI (mmllm.eval.generation).

Models are tiny random Llamas built from a config (no downloads). Greedy batched output must
equal one-by-one output exactly; the constraint must hold even when the model's argmax is a
forbidden id (an output-layer bias makes it so); every answer is checked against the task
grammar by `check_answer`, written here independently of the processor's state machine.
"""

import dataclasses
import inspect
import json
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_text_tokenizer import sentences
from tiny_models import tiny_llama
from transformers import AutoTokenizer, LogitsProcessorList

from mmllm.audio.io import write_wav
from mmllm.cli.evaluate import generate as main
from mmllm.config import save_config
from mmllm.data.text_tokenizer import train_text_tokenizer
from mmllm.data.vocab import MultimodalVocab, extend_hf_tokenizer
from mmllm.eval.generation import (
    AnswerGrammar,
    GenerationConfig,
    audio_spans,
    cache_argument,
    decode_audio,
    decode_text,
    generate,
    plan_batches,
)
from mmllm.modeling.model import save_pretrained_multimodal
from mmllm.pretrain.config import PretrainConfig, TokenizerSection
from mmllm.tokenizers.backends.offline import FEATURE_SPECS
from mmllm.tokenizers.kmeans import save_centroids

TEXT_TASKS = ("asr", "ks", "ic", "er", "sid", "sv")
LABELS = ["cat", "dog", "the", "the quick brown fox", "lazy fox"]  # one- and multi-token


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP threads that wait on a busy core
    make every op many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text_tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok") / "t"
    train_text_tokenizer(sentences(), directory, vocab_size=400)  # whole-word pieces
    return AutoTokenizer.from_pretrained(directory)


def make_vocab(tokenizer, out_codebooks=2):
    return MultimodalVocab(len(tokenizer), [("in", 1, 12), ("out", out_codebooks, 8)])


def tiny_model(vocab, seed=0, favour=(), dtype=torch.float64):
    """A random 2-layer Llama. `favour`: ids whose logits lead by ~50 whatever the input:
    the last MLP's bias puts a large constant on hidden unit 0, so after the final norm that
    unit is ~sqrt(hidden), and only the favoured rows of the output layer read it."""
    model = tiny_llama(
        vocab.size, 32, 2, 4, 2, seed, max_position_embeddings=256, mlp_bias=bool(favour)
    ).eval()
    if favour:
        with torch.no_grad():
            model.model.layers[-1].mlp.down_proj.bias[0] = 1000.0
            model.lm_head.weight[:, 0] = 0.0
            model.lm_head.weight[list(favour), 0] = 10.0
    return model.to(dtype)  # float64: batched vs single rounding can never flip an argmax


def random_prompts(vocab, lengths, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(vocab.size) for _ in range(n)] for n in lengths]


def check_answer(ids, task, vocab, tokenizer, pattern="flatten", allowed=None):
    """Assert `ids` is a complete answer of `task` (grammar of mmllm/generate.py's docstring)."""
    eos = vocab.eos_task_id
    assert ids and ids[-1] == eos and eos not in ids[:-1], ids
    body = ids[:-1]
    if task in TEXT_TASKS:
        specials = {tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
        specials.add(tokenizer.pad_token_id)
        assert body and all(0 <= i < vocab.text_size and i not in specials for i in body), body
        if allowed:
            assert body in [tokenizer.encode(t, add_special_tokens=False) for t in allowed]
        return
    num_codebooks = vocab.block("out").num_codebooks
    width = num_codebooks if pattern == "flatten" else 1
    i = 0
    for span_index in range({"ss": 2}.get(task, 1)):
        if span_index:
            assert body[i] == vocab.sep_id, body
            i += 1
        assert body[i] == vocab.audio_start_id, body
        end = body.index(vocab.audio_end_id, i)
        span = body[i + 1 : end]
        assert len(span) >= width and len(span) % width == 0, body  # whole frames, >= 1
        for position, token in enumerate(span):
            start, stop = vocab.audio_range("out", position % width)
            assert start <= token < stop, (position, token, body)
        i = end + 1
    assert i == len(body), body


def test_batched_equals_one_by_one(text_tokenizer):
    vocab = make_vocab(text_tokenizer)
    model = tiny_model(vocab)
    prompts = random_prompts(vocab, [5, 17, 9, 30, 12, 3, 21])
    grammar = AnswerGrammar(vocab, text_tokenizer, "out")
    tasks = ["asr", "tts", "ks", "ss", "se", "sv", "ic"]
    for constrained in (False, True):
        cfg = dict(max_new_tokens=24, constrained=constrained)
        kwargs = dict(tasks=tasks, grammar=grammar)
        batched = generate(model, prompts, vocab, GenerationConfig(batch_size=4, **cfg), **kwargs)
        single = generate(model, prompts, vocab, GenerationConfig(batch_size=1, **cfg), **kwargs)
        assert batched == single
        assert not constrained or len({len(o) for o in batched}) > 1  # rows end apart
    # one prompt at a time, the plain Hugging Face loop agrees (unconstrained: stops at eos)
    for prompt in prompts:
        reference = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=vocab.eos_task_id,
            pad_token_id=vocab.eos_task_id,
        )[0, len(prompt) :].tolist()
        unconstrained = generate(model, [prompt], vocab, GenerationConfig(max_new_tokens=24))[0]
        if vocab.eos_task_id in reference:
            reference = reference[: reference.index(vocab.eos_task_id) + 1]
        assert unconstrained == reference


def test_processor_inside_hf_generate_matches_our_loop(text_tokenizer):
    vocab = make_vocab(text_tokenizer)
    model = tiny_model(vocab, seed=3)
    grammar = AnswerGrammar(vocab, text_tokenizer, "out")
    prompts, tasks = random_prompts(vocab, [7, 13, 4], seed=1), ["tts", "asr", "ss"]
    ours = generate(
        model, prompts, vocab, GenerationConfig(max_new_tokens=20), tasks=tasks, grammar=grammar
    )
    width = max(map(len, prompts))
    pad = vocab.eos_task_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    processor = grammar.processor(tasks, max_new_tokens=20, pad_id=pad)
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=20,
        do_sample=False,
        logits_processor=LogitsProcessorList([processor]),
        eos_token_id=vocab.eos_task_id,
        pad_token_id=pad,
    )[:, width:].tolist()
    assert [row[: row.index(pad) + 1] if pad in row else row for row in out] == ours


@pytest.mark.parametrize(
    "task, favoured",
    [
        ("asr", "pad"),  # the text tokenizer's own <pad>
        ("ks", "eos"),  # eos before any text
        ("sid", "audio"),  # an audio id in a text answer
        ("tts", "end"),  # <|audio_end|> before a whole frame
        ("se", "codebook1"),  # codebook 1 where codebook 0 must come
        ("ss", "text"),  # text inside audio
    ],
)
def test_constraint_overrides_a_model_that_prefers_forbidden_ids(text_tokenizer, task, favoured):
    vocab = make_vocab(text_tokenizer)
    forbidden = {
        "pad": text_tokenizer.pad_token_id,
        "eos": vocab.eos_task_id,
        "audio": vocab.audio_id("in", 0, 3),
        "end": vocab.audio_end_id,
        "codebook1": vocab.audio_id("out", 1, 5),
        "text": 7,
    }[favoured]
    model = tiny_model(vocab, favour=[forbidden])
    prompts = random_prompts(vocab, [6, 11])
    cfg = GenerationConfig(max_new_tokens=15)
    plain = generate(model, prompts, vocab, cfg)
    assert all(o[0] == forbidden for o in plain)  # without the constraint the bias wins
    grammar = AnswerGrammar(vocab, text_tokenizer, "out")
    outputs = generate(model, prompts, vocab, cfg, tasks=task, grammar=grammar)
    for output in outputs:
        check_answer(output, task, vocab, text_tokenizer)


@pytest.mark.parametrize(("codebooks", "pattern"), [(1, "flatten"), (2, "flatten"), (2, "first")])
def test_sampled_audio_spans_are_well_formed(text_tokenizer, codebooks, pattern):
    vocab = make_vocab(text_tokenizer, out_codebooks=codebooks)
    model = tiny_model(vocab, seed=1)
    grammar = AnswerGrammar(vocab, text_tokenizer, "out", pattern=pattern)
    tasks = ["tts", "se", "ss"] * 4
    prompts = random_prompts(vocab, [4 + i for i in range(len(tasks))], seed=2)
    for max_new in (13, 40):  # 13: every row has to be closed by the token budget
        cfg = GenerationConfig(max_new_tokens=max_new, do_sample=True, temperature=3.0, seed=5)
        outputs = generate(model, prompts, vocab, cfg, tasks=tasks, grammar=grammar)
        assert outputs == generate(model, prompts, vocab, cfg, tasks=tasks, grammar=grammar)
        for output, task in zip(outputs, tasks, strict=True):
            assert len(output) <= max_new
            check_answer(output, task, vocab, text_tokenizer, pattern)
            spans = audio_spans(output, vocab)
            codes = decode_audio(output, vocab, "out", pattern)
            width = codebooks if pattern == "flatten" else 1
            assert [c.shape[0] for c in codes] == [width] * len(spans)
            assert [c.shape[1] for c in codes] == [len(s) // width for s in spans]
            assert all(int(c.min()) >= 0 and int(c.max()) < 8 for c in codes)
            first = torch.tensor(spans[0][::width]) - vocab.audio_range("out", 0)[0]
            assert torch.equal(codes[0][0], first)  # codebook 0 = every width-th token


def test_rows_stop_at_eos_independently(text_tokenizer):
    vocab = make_vocab(text_tokenizer)
    model = tiny_model(vocab, seed=2)
    grammar = AnswerGrammar(vocab, text_tokenizer, "out")
    prompts = random_prompts(vocab, [8, 8, 8], seed=4)
    tasks = ["ks", "tts", "sv"]
    allowed = {"ks": ["yes"], "sv": ["no", "left"]}
    cfg = GenerationConfig(max_new_tokens=30)
    outputs = generate(
        model, prompts, vocab, cfg, tasks=tasks, grammar=grammar, allowed_texts=allowed
    )
    assert outputs[0] == text_tokenizer.encode("yes", add_special_tokens=False) + [
        vocab.eos_task_id
    ]
    assert len(outputs[1]) > len(outputs[0]) and outputs[1][-1] == vocab.eos_task_id
    assert decode_text(outputs[2], text_tokenizer, vocab) in ("no", "left")
    # after its eos a row may only be padded, whatever the model prefers
    processor = grammar.processor(["ks", "tts"], max_new_tokens=30, pad_id=3)
    scores = torch.zeros(2, vocab.size)
    processor(torch.zeros(2, 5, dtype=torch.long), scores)
    step = torch.tensor([[vocab.eos_task_id], [vocab.audio_start_id]])
    after = processor(torch.cat([torch.zeros(2, 5, dtype=torch.long), step], 1), scores)
    assert torch.isfinite(after[0]).nonzero().flatten().tolist() == [3]
    assert torch.isfinite(after[1]).sum() == 8  # codebook 0 of "out"


def test_the_kv_cache_goes_under_the_name_the_model_takes(text_tokenizer):
    """transformers renamed forward's `past_key_values` to `cache` (the old name warns, then
    goes); generation must use whichever the installed version takes, without a warning."""
    vocab = make_vocab(text_tokenizer)
    model = tiny_model(vocab, seed=2)
    taken = inspect.signature(model.forward).parameters
    assert cache_argument(model) in taken
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        outputs = generate(
            model, random_prompts(vocab, [6, 9]), vocab, GenerationConfig(max_new_tokens=4),
            tasks=["asr", "asr"], grammar=AnswerGrammar(vocab, text_tokenizer, "out"),
        )  # fmt: skip
    assert all(ids and ids[-1] == vocab.eos_task_id for ids in outputs)  # answered and closed


def test_allowed_texts_restrict_to_the_label_set(text_tokenizer):
    vocab = make_vocab(text_tokenizer)
    grammar = AnswerGrammar(vocab, text_tokenizer, "out")
    prompts = random_prompts(vocab, [5 + i % 7 for i in range(16)], seed=6)
    cfg = GenerationConfig(max_new_tokens=40, do_sample=True, temperature=5.0, seed=1)
    favour = text_tokenizer.encode("jumps", add_special_tokens=False)
    seen = set()
    for model in (tiny_model(vocab, seed=4), tiny_model(vocab, favour=favour)):
        outputs = generate(
            model, prompts, vocab, cfg, tasks="ks", grammar=grammar, allowed_texts=LABELS
        )
        for output in outputs:
            check_answer(output, "ks", vocab, text_tokenizer, allowed=LABELS)
            seen.add(decode_text(output, text_tokenizer, vocab))
    assert seen <= set(LABELS) and len(seen) > 2
    # a budget too small for the longest label leaves only the labels that fit
    short = generate(
        tiny_model(vocab, seed=4),
        prompts,
        vocab,
        GenerationConfig(max_new_tokens=2, do_sample=True, temperature=5.0),
        tasks="ks",
        grammar=grammar,
        allowed_texts=LABELS,
    )
    fits = [t for t in LABELS if len(text_tokenizer.encode(t, add_special_tokens=False)) == 1]
    assert {decode_text(o, text_tokenizer, vocab) for o in short} <= set(fits)


def test_generation_config_is_validated():
    assert GenerationConfig().do_sample is False  # greedy by default
    for bad in ({"top_p": 0.0}, {"temperature": 0.0}, {"max_new_tokens": 0}, {"top_kk": 3}):
        with pytest.raises(ValueError):
            GenerationConfig(**bad)


def test_plan_batches_sorts_and_limits_padding():
    lengths = [54] * 4 + [233, 200, 190, 150, 120, 100, 90, 60]
    batches = plan_batches(lengths, batch_size=32, max_padding=0.25)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == longest
        assert longest * len(batch) - sum(lengths[i] for i in batch) <= 0.25 * longest * len(batch)
    assert plan_batches(lengths, batch_size=3, max_padding=0.99)[0] == [4, 5, 6]


def test_decode_text_drops_specials_and_audio(text_tokenizer):
    vocab = make_vocab(text_tokenizer)
    ids = text_tokenizer.encode("the dog", add_special_tokens=False)
    noisy = [text_tokenizer.bos_token_id, *ids, vocab.audio_id("in", 0, 1), vocab.eos_task_id, 9]
    assert decode_text(noisy, text_tokenizer, vocab) == "the dog"


# ---- the CLI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, text_tokenizer):
    """A tiny checkpoint: mfcc-kmeans (1 x 8) in, mel-rvq (2 x 8, decodable) out."""
    root = tmp_path_factory.mktemp("ckpt")
    gen = torch.Generator().manual_seed(0)
    save_centroids(
        root / "mfcc",
        {
            "centroids": torch.randn(8, 26, generator=gen),
            "mfcc_mean": torch.zeros(13),
            "mfcc_std": torch.ones(13),
        },
        {"tokenizer": "mfcc-kmeans", "features": FEATURE_SPECS["mfcc-kmeans"]},
    )
    save_centroids(
        root / "melrvq",
        {"codebooks": torch.randn(2, 8, 80, generator=gen)},
        {"tokenizer": "mel-rvq", "features": FEATURE_SPECS["mel-rvq"]},
    )
    configs = {
        "in": {"name": "mfcc-kmeans", "codebook_size": 8, "centroids": str(root / "mfcc")},
        "out": {
            "name": "mel-rvq",
            "centroids": str(root / "melrvq"),
            "options": {"griffin_lim_iters": 2},
        },
    }
    for name, config in configs.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
    tokenizer = AutoTokenizer.from_pretrained(text_tokenizer.name_or_path)  # a fresh copy
    vocab = MultimodalVocab(len(tokenizer), [("mfcc-kmeans", 1, 8), ("mel-rvq", 2, 8)])
    extend_hf_tokenizer(tokenizer, vocab)
    # favouring one code per codebook makes audio spans run until the token budget ends them
    favour = [vocab.audio_id("mel-rvq", 0, 1), vocab.audio_id("mel-rvq", 1, 2)]
    model = tiny_model(vocab, favour=favour, dtype=torch.float32)
    directory = save_pretrained_multimodal(model, tokenizer, vocab, root / "final")
    section = TokenizerSection(input=str(root / "in.yaml"), output=str(root / "out.yaml"))
    save_config(PretrainConfig(tokenizers=section), directory, "mmllm_pretrain.yaml")
    answers = {"labels": {"ks": ["down", "up", "yes"]}, "tts_speakers": ["spk1", "spk2"]}
    (directory / "mmllm_answers.json").write_text(json.dumps(answers))
    wav = np.random.default_rng(0).uniform(-0.3, 0.3, 8000).astype(np.float32)
    write_wav(root / "a.wav", wav, 16000)
    write_wav(root / "b.wav", wav[::-1].copy(), 16000)
    return root


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def test_cli_text_and_audio_tasks(checkpoint, capsys):
    final = checkpoint / "final"
    code, out, err = run_cli(capsys, "--checkpoint", final, "asr", checkpoint / "a.wav")
    assert code == 0 and err == "" and out.count("\n") == 0
    code, out, _ = run_cli(
        capsys, "--checkpoint", final, "sv", checkpoint / "a.wav", checkpoint / "b.wav"
    )
    assert code == 0 and out in ("yes", "no")
    code, out, _ = run_cli(
        capsys, "--checkpoint", final, "ks", checkpoint / "a.wav", "--allowed", "up", "down"
    )
    assert code == 0 and out in ("up", "down")
    args = ["--checkpoint", final, "tts", "the dog runs", "--speaker", "spk1"]
    code, out, err = run_cli(capsys, *args, "--out", checkpoint / "t.wav", "--max-new-tokens", "30")
    assert code == 0 and (checkpoint / "t.wav").is_file() and out.startswith("wrote"), err
    args = ["--checkpoint", final, "ss", checkpoint / "a.wav", "--max-new-tokens", "40"]
    code, out, err = run_cli(capsys, *args, "--out", checkpoint / "s.wav")
    assert code == 0, err
    assert (checkpoint / "s-1.wav").is_file() and (checkpoint / "s-2.wav").is_file()


def test_cli_batches_many_inputs_like_one_by_one(checkpoint, capsys, tmp_path):
    """Directories, list files and several texts go through the batched engine in one call,
    a line per input, the same answers as one call per input (greedy)."""
    final = checkpoint / "final"
    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        write_wav(
            clips / f"c{i}.wav", rng.uniform(-0.3, 0.3, 4000 + 1500 * i).astype(np.float32), 16000
        )
    single = {}
    for path in sorted(clips.iterdir()):
        code, out, err = run_cli(capsys, "--checkpoint", final, "ks", path)
        assert code == 0, err
        single[str(path)] = out
    code, out, err = run_cli(capsys, "--checkpoint", final, "ks", clips, "--batch-size", "3")
    assert code == 0, err
    assert dict(line.split("\t") for line in out.splitlines()) == single
    listing = tmp_path / "clips.txt"
    listing.write_text("# two of them\nclips/c3.wav\n\nclips/c0.wav\n")
    code, out, err = run_cli(capsys, "--checkpoint", final, "ks", listing, "--jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["input"] for r in rows] == [str(clips / "c3.wav"), str(clips / "c0.wav")]
    assert [r["answer"] for r in rows] == [single[r["input"]] for r in rows]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"clips/c0.wav clips/c1.wav\n{clips / 'c2.wav'} clips/c3.wav\n")
    code, out, err = run_cli(capsys, "--checkpoint", final, "sv", pairs)
    assert (
        code == 0
        and [line.split("\t")[1] in ("yes", "no") for line in out.splitlines()] == [True] * 2
    ), err
    texts = tmp_path / "lines.txt"
    texts.write_text("the dog runs\nturn on the light\n")
    args = ["tts", "a cat", "--text-file", texts, "--speaker", "spk1", "--max-new-tokens", "20"]
    code, out, err = run_cli(capsys, "--checkpoint", final, *args, "--out", tmp_path / "wavs")
    assert code == 0, err
    assert [line.split("\t") for line in out.splitlines()] == [
        [text, str(tmp_path / "wavs" / f"{i:04d}.wav")]
        for i, text in enumerate(["a cat", "the dog runs", "turn on the light"])
    ]
    assert all((tmp_path / "wavs" / f"{i:04d}.wav").is_file() for i in range(3))


def test_cli_errors_are_one_line_and_exit_2(checkpoint, capsys, tmp_path):
    final = checkpoint / "final"
    (tmp_path / "bad.wav").write_text("not audio")
    empty = tmp_path / "empty"
    empty.mkdir()
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{checkpoint / 'a.wav'} {checkpoint / 'b.wav'}\nonly-one.wav\n")
    listing = tmp_path / "listed.txt"
    listing.write_text("gone.wav\n")
    no_vocab = tmp_path / "no_vocab"
    shutil.copytree(final, no_vocab)
    (no_vocab / "mmllm_vocab.json").unlink()
    cannot_decode = tmp_path / "mfcc_out"
    shutil.copytree(final, cannot_decode)
    config = PretrainConfig(tokenizers=TokenizerSection(input=str(checkpoint / "in.yaml")))
    save_config(config, cannot_decode, "mmllm_pretrain.yaml")
    cases = [
        (["asr", tmp_path / "missing.wav"], "input audio", "missing.wav: file not found"),
        (["asr", tmp_path / "bad.wav"], "bad.wav", "cannot decode audio"),
        (["dance", checkpoint / "a.wav"], "unknown task 'dance'", ""),
        (
            ["tts", "  ", "--speaker", "x", "--out", tmp_path / "o.wav"],
            "text to speak is empty",
            "",
        ),
        (["tts", "hi", "--out", tmp_path / "o.wav"], "--speaker is required", ""),
        (["sv", checkpoint / "a.wav"], "ENROLLMENT.wav TRIAL.wav", ""),
        (["se", checkpoint / "a.wav"], "--out FILE.wav is required", ""),
        (["asr", empty], "input directory", "no audio files"),
        (["asr"], "task asr takes AUDIO", ""),
        (
            ["ks", checkpoint / "a.wav", checkpoint / "b.wav", "--out", checkpoint / "a.wav"],
            "is a file; several inputs need a DIRECTORY",
            "",
        ),
        (
            ["tts", "--text-file", tmp_path / "none.txt", "--speaker", "spk1", "--out", tmp_path],
            "none.txt: cannot read it",
            "",
        ),
        (["ks", "--text-file", tmp_path / "bad.wav"], "only tts speaks text", ""),
        (["sv", pairs], "pairs.txt:2: expected ENROLLMENT TRIAL", "'only-one.wav'"),
        (["ks", listing], "listed.txt:1: ", "gone.wav: file not found"),
        (["tts", "hi", "--speaker", "nobody", "--out", tmp_path / "o.wav"], "'nobody'", "spk1"),
        (["ks", checkpoint / "a.wav", "--allowed", "up", "zzz"], "['zzz']: not ks labels", ""),
        (["asr", checkpoint / "a.wav", "--allowed", ""], "--allowed: empty answer", ""),
        (["asr", checkpoint / "a.wav", "--device", "banana"], "--device 'banana'", ""),
        (["asr", checkpoint / "a.wav", "--sample", "--temperature", "0"], "temperature > 0", ""),
        (["asr", checkpoint / "a.wav", "--max-new-tokens", "0"], "--max-new-tokens", ">= 1"),
        (["tts", "x", "--speaker", "spk1", "--out", tmp_path], "is a directory", ""),
        (
            ["tts", "the dog " * 600, "--speaker", "spk1", "--out", tmp_path / "o.wav"],
            "the text (4800 characters) makes a prompt of",
            "the model's context is 256 tokens",
        ),
    ]
    for argv, *expected in cases:
        code, out, err = run_cli(capsys, "--checkpoint", final, *argv)
        assert code == 2 and out == "" and err.startswith("error: ") and "\n" not in err, err
        assert all(e in err for e in expected), err
    code, _, err = run_cli(capsys, "--checkpoint", no_vocab, "asr", checkpoint / "a.wav")
    assert code == 2 and "no mmllm_vocab.json" in err and str(no_vocab) in err
    args = ["se", checkpoint / "a.wav", "--out", tmp_path / "o.wav"]
    code, _, err = run_cli(capsys, "--checkpoint", cannot_decode, *args)
    assert code == 2 and "'mfcc-kmeans' cannot decode audio" in err and "\n" not in err
    code, _, err = run_cli(capsys, "asr", checkpoint / "a.wav")
    assert code == 2 and "--checkpoint" in err


def test_cli_refuses_flipped_checkpoint_bytes_naming_the_file(checkpoint, tmp_path):
    """4 KB of model.safetensors flipped: the checkpoint loaded and answered garbage before;
    now the prompting CLI (a subprocess, as a user runs it) exits 2 naming the file."""
    import shutil
    import subprocess
    import sys

    final = shutil.copytree(checkpoint / "final", tmp_path / "final")
    weights = final / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8192:-4096] = bytes(b ^ 0xFF for b in data[-8192:-4096])
    weights.write_bytes(bytes(data))
    result = subprocess.run(
        [sys.executable, "-m", "mmllm", "generate", "--checkpoint", str(final), "asr"]
        + [str(checkpoint / "a.wav")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert f"{weights}: contents differ" in result.stderr


def test_checkpoint_prompts_from_anywhere_with_its_packaged_tokenizers(checkpoint, tmp_path):
    """An export carries its tokenizer configs and fitted files (mmllm.tokenizers.portable):
    the checkpoint copied elsewhere answers from another working directory, through its
    own copies, even with the run's tokenizer files gone."""
    import subprocess
    import sys

    from mmllm.config import load_config
    from mmllm.eval.prompting import Checkpoint
    from mmllm.tokenizers.base import TokenizerConfig
    from mmllm.tokenizers.portable import package_tokenizer

    run = shutil.copytree(checkpoint, tmp_path / "run")  # the run's own files, to delete
    final = run / "final"
    for role, name in (("input", "in"), ("output", "out")):
        cfg = load_config(TokenizerConfig, checkpoint / f"{name}.yaml")
        cfg = dataclasses.replace(cfg, centroids=str(run / Path(cfg.centroids).name))
        package_tokenizer(cfg, final, role)
    (tmp_path / "elsewhere").mkdir()
    moved = shutil.move(str(final), str(tmp_path / "elsewhere" / "final"))
    shutil.rmtree(run)
    opened = Checkpoint.open(moved)
    assert opened.input_config.centroids == str(Path(moved) / "tokenizers" / "input-centroids")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "mmllm", "generate", "--checkpoint", str(moved), "asr"]
        + [str(checkpoint / "a.wav")],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
