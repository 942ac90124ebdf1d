"""Audio I/O and features: real values against independent implementations, and bad input."""

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.fft import dct
from transformers.audio_utils import spectrogram, window_function

from mmllm.audio.features import log_mel, mel_filters, mfcc
from mmllm.audio.io import (
    AudioError,
    decode_audio_value,
    encode_wav,
    load_audio,
    prepare_waveform,
    resample,
    write_wav,
)


def sine(freq: float, seconds: float, sample_rate: int) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_load_stereo_resamples_to_mono(tmp_path):
    left, right = sine(440, 1.0, 44100), sine(880, 1.0, 44100)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 44100)
    wav, sample_rate = load_audio(path, target_sr=16000)
    assert sample_rate == 16000 and wav.dtype == np.float32 and wav.ndim == 1
    assert wav.shape == (16000,)
    # the mono mix of two sines at half amplitude each: RMS = sqrt(0.5^2/2 * 2) / 2
    expected = np.sqrt(2 * 0.5**2 / 2) / 2
    assert np.sqrt(np.mean(wav[1000:-1000] ** 2)) == pytest.approx(expected, rel=0.01)


def test_resample_keeps_frequency():
    wav = resample(sine(1000, 1.0, 48000), 48000, 16000)
    spectrum = np.abs(np.fft.rfft(wav))
    assert wav.size == 16000 and np.argmax(spectrum) == 1000  # 1 Hz bins


def test_keep_native_rate_and_bytes_roundtrip():
    wav = sine(300, 0.5, 22050)
    decoded, sample_rate = load_audio(encode_wav(wav, 22050), target_sr=None)
    assert sample_rate == 22050
    np.testing.assert_allclose(decoded, wav, atol=1 / 32768 + 1e-6)  # 16-bit PCM quantisation


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.wav", "missing.wav: file not found"),
        (
            lambda p: _write_bytes(p / "junk.wav", b"not audio at all" * 10),
            "junk.wav: cannot decode audio",
        ),
        (
            lambda p: _write_wav(p / "empty.wav", np.zeros(0, np.float32), 16000),
            "empty.wav: audio has zero samples",
        ),
        (
            lambda p: _write_wav(p / "low.wav", np.zeros(100, np.float32), 2000),
            "low.wav: unsupported sample rate 2000",
        ),
        (
            lambda p: _write_float(p / "nan.wav", np.array([0.1, np.nan, np.inf, 0.2], np.float32)),
            "nan.wav: audio contains 2 NaN/Inf samples",
        ),
    ],
)
def test_bad_files_name_file_and_problem(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_bad_in_memory_audio_names_row():
    with pytest.raises(AudioError, match=r"^row-7: cannot decode audio"):
        decode_audio_value({"bytes": b"garbage", "path": None}, name="row-7")
    with pytest.raises(AudioError, match=r"^row-8: audio is missing"):
        decode_audio_value(None, name="row-8")
    with pytest.raises(AudioError, match=r"^mic: audio contains 1 NaN/Inf"):
        prepare_waveform(np.array([0.0, np.nan]), 16000, name="mic")


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


def _write_wav(path, wav, sample_rate):
    sf.write(path, wav, sample_rate, subtype="PCM_16")
    return path


def _write_float(path, wav):
    sf.write(path, wav, 16000, subtype="FLOAT")
    return path


def test_log_mel_matches_transformers_numpy_reference():
    rng = np.random.default_rng(0)
    wav = rng.standard_normal(16000).astype(np.float32) * 0.1
    ours = log_mel(torch.from_numpy(wav), 16000, n_fft=400, hop_length=160, n_mels=80)
    reference = spectrogram(
        wav.astype(np.float64),
        window_function(400, "hann"),
        frame_length=400,
        hop_length=160,
        power=2.0,
        center=True,
        pad_mode="reflect",
        mel_filters=mel_filters(16000, 400, 80, 0.0, 8000.0).double().numpy(),
        mel_floor=1e-10,
        log_mel="log",
    )
    assert ours.shape == (80, 16000 // 160 + 1) == reference.shape
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-3)


def test_log_mel_batched_equals_single_and_peaks_at_tone():
    noise = 0.001 * torch.randn(8000, generator=torch.Generator().manual_seed(0))
    tone = torch.from_numpy(sine(1000, 0.5, 16000)) + noise
    batch = torch.stack([tone, tone * 0.5])
    single = log_mel(tone)
    batched = log_mel(batch)
    assert batched.shape == (2, 80, 51)
    torch.testing.assert_close(batched[0], single)
    # halving amplitude lowers power by exactly log(4) in every bin (above the floor)
    above_floor = batched[1] > np.log(1e-10) + 1
    assert above_floor.all()
    difference = (batched[0] - batched[1])[above_floor]
    torch.testing.assert_close(
        difference, torch.full_like(difference, np.log(4.0)), atol=1e-3, rtol=0
    )
    hz_per_mel_bin = (
        mel_filters(16000, 400, 80, 0.0, 8000.0).argmax(dim=0).float() * 40
    )  # bin -> Hz
    peak_bin = single[:, 10:40].mean(dim=1).argmax()
    assert abs(hz_per_mel_bin[peak_bin].item() - 1000) < 80


def test_mfcc_is_orthonormal_dct_of_log_mel():
    wav = torch.from_numpy(sine(500, 0.3, 16000)) + 0.01 * torch.randn(
        4800, generator=torch.Generator().manual_seed(0)
    )
    ours = mfcc(wav, n_mfcc=13, n_mels=40)
    reference = dct(log_mel(wav, n_mels=40).numpy(), type=2, norm="ortho", axis=0)[:13]
    assert ours.shape == (13, 31)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-3)


def test_truncated_wav_is_refused_with_frames_found_and_declared(tmp_path):
    """Half a WAV's bytes (a partial copy): libsndfile decodes the half silently; we refuse
    it naming the file, the frames found and the frames its header declares."""
    path = tmp_path / "half.wav"
    write_wav(path, np.zeros(16000, np.float32), 16000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"half\.wav: truncated audio file: 79\d\d frames found"):
        load_audio(path)
    # the same bytes in a corpus row
    with pytest.raises(AudioError, match="row-7: truncated audio file"):
        decode_audio_value({"bytes": path.read_bytes(), "path": None}, name="row-7")
    write_wav(path, np.zeros(16000, np.float32), 16000)  # complete: read as before
    assert load_audio(path)[0].shape == (16000,)
