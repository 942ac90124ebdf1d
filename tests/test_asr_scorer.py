"""The ASR of dWER (mmllm.eval.asr_scorer) and dWER of SE / SS / TTS answers (mmllm.eval.dasb).

The Whisper is a tiny random one built from a config with a ten-letter tokenizer (offline);
its weights are drawn large (init_std 0.5) so that its greedy transcript depends on the input.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generate import checkpoint, text_tokenizer  # noqa: F401 (fixtures: a tiny checkpoint)
from transformers import (
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

import mmllm.eval.dasb
from mmllm.audio.io import resample
from mmllm.eval.asr_scorer import AsrError, CheckpointAsr, WhisperAsr, load_asr
from mmllm.eval.dasb import _signal_metrics, score_dwer
from mmllm.eval.generation import GenerationConfig
from mmllm.text.normalize import normalize_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A random 1-layer Whisper (16-dim, 1 s windows) and its processor, saved like a hub model."""
    letters = "abcdefghij"
    vocab = {piece: i for i, piece in enumerate([*letters, *("Ġ" + c for c in letters)])}
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    specials = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    end, start, english, transcribe, no_timestamps = tokenizer.convert_tokens_to_ids(
        ["<|endoftext|>", *specials]
    )
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=1)  # 16 kHz, 100 frames
    torch.manual_seed(3)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=50,  # 100 feature frames after the stride-2 convolution
        max_target_positions=12,
        decoder_start_token_id=start,
        eos_token_id=end,
        pad_token_id=end,
        bos_token_id=end,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        init_std=0.5,
    )
    directory = tmp_path_factory.mktemp("whisper") / "tiny-whisper"
    model = WhisperForConditionalGeneration(config).eval()
    # multilingual like whisper-large: the scorer must ask for English transcription
    for key, value in {
        "is_multilingual": True,
        "lang_to_id": {"<|en|>": english},
        "task_to_id": {"transcribe": transcribe},
        "no_timestamps_token_id": no_timestamps,
        "_from_model_config": False,  # else loading rebuilds it from the model config
    }.items():  # what whisper-large's generation_config.json holds (`update` drops new keys)
        setattr(model.generation_config, key, value)
    model.save_pretrained(directory)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def test_whisper_transcripts_equal_a_direct_generate_on_resampled_audio(whisper_dir):
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 8000
    wavs = [  # 8 kHz, at most 1 s (the window)
        (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32),
        rng.uniform(-0.3, 0.3, 6000).astype(np.float32),
        np.zeros(2000, np.float32),
    ]
    asr = load_asr(whisper_dir, GenerationConfig(batch_size=2))  # batches of 2 and 1
    assert isinstance(asr, WhisperAsr) and asr.name == f"whisper:{whisper_dir}"
    assert asr.generate_kwargs == {"language": "en", "task": "transcribe"}  # multilingual
    transcripts = asr.transcribe(wavs, 8000)

    processor = AutoProcessor.from_pretrained(whisper_dir)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(whisper_dir).eval()
    at_16k = [resample(w, 8000, 16000) for w in wavs]
    inputs = processor(at_16k, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, language="en", task="transcribe")
    decoded = processor.batch_decode(ids, skip_special_tokens=True)
    assert transcripts == [normalize_text(text) for text in decoded]
    assert all(transcripts) and len(set(transcripts)) == 3  # it hears its input
    assert asr.transcribe(wavs, 16000) != transcripts  # so the resampling shows
    assert all(text == " ".join(text.split()) for text in transcripts)  # normalised


def test_checkpoint_directory_gives_checkpoint_asr(checkpoint):  # noqa: F811
    final = checkpoint / "final"
    asr = load_asr(final, GenerationConfig(max_new_tokens=6))
    assert isinstance(asr, CheckpointAsr) and asr.name == f"mmllm:{final}"
    wav = np.random.default_rng(0).uniform(-0.3, 0.3, 4000).astype(np.float32)
    transcripts = asr.transcribe([wav, wav[::-1].copy()], 8000)
    assert len(transcripts) == 2 and all(isinstance(t, str) for t in transcripts)


def test_bad_specs_fail_in_one_line_naming_the_spec(checkpoint, tmp_path):  # noqa: F811
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "mmllm_vocab.json").write_text("{}")
    for spec, message in [
        (empty, "neither an mmllm checkpoint"),
        (tmp_path / "missing" / "dir", "neither an mmllm checkpoint"),
        (broken, "the mmllm checkpoint does not load"),
    ]:
        with pytest.raises(AsrError) as err:
            load_asr(spec, GenerationConfig())
        assert str(err.value).startswith(f"ASR {spec}: ") and message in str(err.value)
        assert "\n" not in str(err.value)


class FakeAsr:
    """Hears a fixed text per waveform (looked up by value)."""

    name = "fake"

    def __init__(self, heard: list[tuple[np.ndarray, str]]) -> None:
        self.heard = heard

    def transcribe(self, wavs, sample_rate):
        return [next(text for w, text in self.heard if np.array_equal(w, x)) for x in wavs]


def test_ss_dwer_pairs_each_estimate_with_its_pit_matched_source():
    rng = np.random.default_rng(0)
    sources = [
        np.sin(2 * np.pi * 200 * np.arange(1600) / 16000),
        rng.standard_normal(1600) * 0.3,
    ]
    signals = {"mix": sources[0] + sources[1], "s0": sources[0], "s1": sources[1]}
    row = {"id": "m", "audio": "mix", "refs": ["s0", "s1"]}
    wavs = [1.1 * sources[1], 0.9 * sources[0]]  # the separator's order is the reverse
    load = lambda value, sample_rate, name=None: signals[value]  # noqa: E731
    values, pairs = _signal_metrics("ss", row, wavs, 16000, load, {})
    assert values["si_snr_improvement"] > 50  # each estimate is its source, scaled
    asr = FakeAsr(
        [(sources[0], "the cat sat"), (sources[1], "a dog ran far")]
        + [(wavs[0], "a dog ran far"), (wavs[1], "the cat sat")]
    )
    assert score_dwer(asr, pairs, 16000) == {"dwer_asr": "fake", "dwer": 0.0}
    # the unmatched pairing: 3 substitutions + 1 insertion, 3 substitutions + 1 deletion
    unmatched = score_dwer(asr, list(zip(sources, wavs, strict=True)), 16000)
    assert unmatched["dwer"] == pytest.approx(8 / 7)


def test_se_dwer_hears_the_clean_reference_and_tts_dwer_reads_the_text():
    rng = np.random.default_rng(1)
    clean = rng.standard_normal(16000) * 0.3
    noisy = clean + rng.standard_normal(16000) * 0.3
    answer = clean + rng.standard_normal(16000) * 0.05
    signals = {"noisy": noisy, "clean": clean}
    row = {"id": "n", "audio": "noisy", "refs": ["clean"]}
    load = lambda value, sample_rate, name=None: signals[value]  # noqa: E731
    signal = {}
    values, pairs = _signal_metrics("se", row, [answer], 16000, load, signal)
    assert values["si_snr_improvement"] > 0 and set(signal) >= {"si_snr_improvement", "stoi"}
    asr = FakeAsr([(clean, "one two three"), (answer, "one two")])
    assert score_dwer(asr, pairs, 16000) == {"dwer_asr": "fake", "dwer": pytest.approx(1 / 3)}
    _, pairs = _signal_metrics(
        "tts", {"id": "t", "audio": "noisy", "text": "one two four"}, [answer], 16000, load, {}
    )
    assert score_dwer(asr, pairs, 16000)["dwer"] == pytest.approx(1 / 3)  # four -> deleted
    silent = FakeAsr([(clean, ""), (answer, "one")])
    assert "dwer_undefined" in score_dwer(silent, [(clean, answer)], 16000)


@pytest.mark.parametrize("flag", ["--asr", "--asr-checkpoint"])
def test_eval_cli_passes_asr_spec_by_either_flag(flag, monkeypatch, tmp_path):
    seen = {}

    def fake_evaluate(directory, tasks, out, split, limit, config, asr, vocoder, device, dtype):
        seen.update(tasks=tasks, asr=asr)
        assert (device, dtype) == ("auto", "auto")  # the defaults: CUDA in bf16 where present
        return {"tasks": {}}

    monkeypatch.setattr(mmllm.eval.dasb, "evaluate_checkpoint", fake_evaluate)
    spec = importlib.util.spec_from_file_location("eval_dasb_script", ROOT / "eval" / "dasb.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--checkpoint", str(tmp_path), "--tasks", "se,ss", flag, "openai/whisper-tiny.en"]
    assert script.main(argv) == 0
    assert seen == {"tasks": ["se", "ss"], "asr": "openai/whisper-tiny.en"}
