"""Benchmark: resynthesis quality of a trained token vocoder against mel inversion.

    python bench/vocoder.py --vocoder runs/vocoders/mfcc-kmeans \
        [--tokenizer configs/tokenizers/mfcc-kmeans.yaml] [--data data/synthdasb-small] \
        [--cache data/tokens/mfcc-kmeans] [--task asr] [--split test] [--num 100] [--wavs 4]

For the first `--num` rows of the task's split, scores against the original audio:
(a) the vocoder from the cached tokens, through the tokenizer's own `decode` (config key
    `vocoder` set to --vocoder; without --vocoder the tokenizer's own decoder, e.g. mel-rvq's
    Griffin-Lim: `--tokenizer configs/tokenizers/mel-rvq.yaml --cache data/tokens/mel-rvq`), and
(b) the mel-inversion baseline from the same tokens (the target's comparison): for
    mfcc-kmeans, each code's centroid de-normalised to its two 13-MFCC frames, the inverse
    DCT back to 40 log-mel bands, the pseudo-inverse of the mel filter bank to a power
    spectrum, Griffin-Lim (32 iterations); a tokenizer with its own decoder (mel-rvq) uses
    that decoder, and
(c) an upper bound that is not a token decoder: Griffin-Lim from the 80-bin log-mel of the
    ORIGINAL audio (mel-rvq's decoder without quantisation).
With --asr (an mmllm checkpoint dir, or a Whisper hub id / dir; mmllm.eval.asr_scorer), dWER: WER
between that ASR's transcripts of the original and of each resynthesis. Metrics: STOI
(mmllm.eval.metrics.stoi) and MFCC mel-cepstral distortion in dB
(mmllm.eval.metrics.mel_cepstral_distortion, silent frames left out); mean and standard
deviation over utterances, and seconds of compute per second of audio. Both outputs are
cut to the original length. Writes bench/results/vocoder.json (atomically) and the first
`--wavs` utterances (original, vocoder, griffin_lim) to bench/results/vocoder_wavs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mmllm.audio.features import GRIFFIN_LIM_ITERS, dct_matrix, griffin_lim, mel_filters
from mmllm.audio.io import decode_audio_value, write_wav
from mmllm.config import load_config
from mmllm.corpus.reader import load_task
from mmllm.data.cache import CachedSplit, read_cache_card
from mmllm.eval.metrics import dwer as differential_wer
from mmllm.eval.metrics import mel_cepstral_distortion, stoi
from mmllm.fileio import atomic_write_text
from mmllm.runtime import machine_facts, utc_timestamp
from mmllm.tokenizers.backends.offline import (
    HOP_LENGTH,
    MEL_N_FFT,
    MEL_N_MELS,
    MFCC_HOP,
    MFCC_N_FFT,
    MFCC_N_MELS,
    N_MFCC,
    SAMPLE_RATE,
    log_mel_frames,
)
from mmllm.tokenizers.base import TokenizerConfig
from mmllm.tokenizers.registry import build_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "vocoder.json"
WAVS = Path(__file__).resolve().parent / "results" / "vocoder_wavs"


def mel_inversion(wav: torch.Tensor) -> torch.Tensor:
    """wav [T] 16 kHz -> [T]: log-mel (mel-rvq's features, unquantised) -> linear power via
    the pseudo-inverse of the filter bank -> Griffin-Lim, as MelRvqTokenizer.decode."""
    log_mel, frame_lengths = log_mel_frames(wav[None], torch.tensor([wav.numel()]))
    bank = mel_filters(SAMPLE_RATE, MEL_N_FFT, MEL_N_MELS, 0.0, SAMPLE_RATE / 2).double()
    inverse = torch.linalg.pinv(bank).float()  # [80, 513]
    power = (log_mel.exp() @ inverse).clamp(min=0.0)  # [1, F, 513]
    length = int(frame_lengths[0]) * HOP_LENGTH
    out = griffin_lim(power.sqrt().transpose(1, 2), length, MEL_N_FFT, HOP_LENGTH)
    return out[0, : wav.numel()]


def token_mel_inversion(tokenizer, codes: torch.Tensor) -> torch.Tensor:
    """codes [1, K, F] -> wav [F * 320] by mel inversion of what the codes stand for
    (mfcc-kmeans: centroid MFCCs -> log-mel -> power -> Griffin-Lim; others: own decoder)."""
    if tokenizer.name != "mfcc-kmeans":
        plain = build_tokenizer(dataclasses.replace(tokenizer.cfg, vocoder=None))
        wav, lengths = plain.decode(codes, torch.tensor([codes.shape[-1]]))
        return wav[0, : int(lengths[0])]
    frames = tokenizer.centroids[codes[0, 0]].double()  # [F, 26] normalised, 2 x 13 stacked
    mfcc = frames.reshape(-1, N_MFCC) * tokenizer.mfcc_std.double() + tokenizer.mfcc_mean.double()
    log_mel = mfcc @ torch.linalg.pinv(dct_matrix(MFCC_N_MELS, N_MFCC).double())  # [2F, 40]
    bank = mel_filters(SAMPLE_RATE, MFCC_N_FFT, MFCC_N_MELS, 0.0, SAMPLE_RATE / 2).double()
    power = (log_mel.exp() @ torch.linalg.pinv(bank)).clamp(min=0.0)  # [2F, 201]
    length = codes.shape[-1] * HOP_LENGTH
    magnitude = power.sqrt().float().T[None]  # [1, 201, 2F]
    return griffin_lim(magnitude, length, MFCC_N_FFT, MFCC_HOP)[0]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
        "max": max(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--vocoder",
        type=Path,
        default=None,
        help="trained vocoder directory; omitted: the tokenizer's own decoder (e.g. mel-rvq)",
    )
    parser.add_argument(
        "--tokenizer", type=Path, default=Path("configs/tokenizers/mfcc-kmeans.yaml")
    )
    parser.add_argument("--data", type=Path, default=Path("data/synthdasb-small"))
    parser.add_argument("--cache", type=Path, default=Path("data/tokens/mfcc-kmeans"))
    parser.add_argument("--task", default="asr")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=100, help="utterances scored")
    parser.add_argument("--wavs", type=int, default=4, help="utterances written as WAVs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--asr",
        "--asr-checkpoint",
        default=None,
        help="ASR of dWER (original vs resynthesised transcripts): mmllm checkpoint dir, or "
        "Whisper hub id / dir",
    )
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    tokenizer_cfg = load_config(TokenizerConfig, args.tokenizer)
    card = read_cache_card(args.cache, tokenizer_cfg)  # the cached codes are this tokenizer's
    vocoder = str(args.vocoder) if args.vocoder else None
    tokenizer = build_tokenizer(dataclasses.replace(tokenizer_cfg, vocoder=vocoder))
    if not tokenizer.can_decode:
        raise SystemExit(f"{tokenizer.name} has no decoder of its own: pass --vocoder DIR")
    if tokenizer.sample_rate != SAMPLE_RATE:
        raise SystemExit(f"the mel baseline is 16 kHz; tokenizer runs at {tokenizer.sample_rate}")
    cached = CachedSplit(args.cache / args.task / args.split)
    rows = load_task(args.data, args.task)[args.split].select_columns(["id", "audio"])
    wav_dir = args.out.parent / (WAVS.name if args.out == RESULTS else args.out.stem + "_wavs")

    scores: dict[str, dict[str, list[float]]] = {
        system: {"stoi": [], "mcd_db": [], "seconds": []}
        for system in ("vocoder", "token_mel_inversion", "griffin_lim")
    }
    per_utterance, written, audio_seconds = [], [], 0.0
    resynthesised: dict[str, list] = {}  # system -> waveforms, for dWER
    for row in rows:
        if len(per_utterance) == args.num:
            break
        if row["id"] not in cached.by_key:  # skipped when the cache was built (bad audio)
            continue
        original = torch.from_numpy(decode_audio_value(row["audio"], SAMPLE_RATE, name=row["id"]))
        codes = torch.from_numpy(cached.get(row["id"]).astype("int64"))[None]  # [1, K, F]
        started = time.perf_counter()
        vocoded, _ = tokenizer.decode(codes, torch.tensor([codes.shape[-1]]))
        vocoded = vocoded[0, : original.numel()]
        middle = time.perf_counter()
        from_tokens = token_mel_inversion(tokenizer, codes)[: original.numel()]
        from_tokens = torch.nn.functional.pad(
            from_tokens, (0, original.numel() - from_tokens.numel())
        )
        token_end = time.perf_counter()
        inverted = mel_inversion(original)
        ended = time.perf_counter()
        audio_seconds += original.numel() / SAMPLE_RATE
        entry = {"id": row["id"], "seconds": original.numel() / SAMPLE_RATE}
        for system, estimate, seconds in (
            ("vocoder", vocoded, middle - started),
            ("token_mel_inversion", from_tokens, token_end - middle),
            ("griffin_lim", inverted, ended - token_end),
        ):
            entry[system] = {
                "stoi": stoi(original, estimate, SAMPLE_RATE),
                "mcd_db": mel_cepstral_distortion(original, estimate, SAMPLE_RATE),
            }
            for metric, value in entry[system].items():
                scores[system][metric].append(value)
            scores[system]["seconds"].append(seconds)
        per_utterance.append(entry)
        for system, audio in (
            ("original", original),
            ("vocoder", vocoded),
            ("token_mel_inversion", from_tokens),
            ("griffin_lim", inverted),
        ):
            resynthesised.setdefault(system, []).append(audio.numpy())
        if len(per_utterance) <= args.wavs:
            for name, audio in (
                ("original", original),
                ("vocoder", vocoded),
                ("token_mel_inversion", from_tokens),
                ("griffin_lim", inverted),
            ):
                path = wav_dir / f"{row['id']}_{name}.wav"
                write_wav(path, audio.clamp(-1, 1).numpy(), SAMPLE_RATE)
                written.append(str(path))
    if not per_utterance:
        raise SystemExit(f"no cached rows in {args.cache}/{args.task}/{args.split}")

    dwer = {}
    if args.asr is not None:
        from mmllm.eval.asr_scorer import AsrError, load_asr
        from mmllm.eval.generation import GenerationConfig

        try:
            asr = load_asr(args.asr, GenerationConfig(max_new_tokens=64))
        except AsrError as err:
            raise SystemExit(f"error: {err}") from None
        heard = {k: asr.transcribe(v, SAMPLE_RATE) for k, v in resynthesised.items()}
        dwer = {
            k: differential_wer(heard["original"], heard[k]).rate for k in heard if k != "original"
        }
        dwer["asr"] = asr.name
    vocoder_card = tokenizer.vocoder.card if tokenizer.vocoder is not None else {}
    systems = {}
    for system, values in scores.items():
        systems[system] = {
            "stoi": summary(values["stoi"]),
            "mcd_db": summary(values["mcd_db"]),
            "compute_seconds_per_audio_second": sum(values["seconds"]) / audio_seconds,
        }
    result = {
        "benchmark": "vocoder resynthesis",
        "date": utc_timestamp(),
        "machine": machine_facts(),
        "data": {"corpus": str(args.data), "task": args.task, "split": args.split},
        "num_utterances": len(per_utterance),
        "audio_seconds": audio_seconds,
        "tokenizer": tokenizer.describe() | {"cache": str(args.cache)},
        "vocoder": {
            "directory": vocoder or f"none: {tokenizer.name}'s own decoder",
            "config": vocoder_card.get("config"),
            "trained_steps": vocoder_card.get("trained_steps"),
            "final_loss": vocoder_card.get("final_loss"),
            "codebook_weights": vocoder_card.get("codebook_weights"),
        },
        "baselines": {
            "token_mel_inversion": "mel inversion of the same tokens (mfcc-kmeans: centroid "
            f"MFCCs -> log-mel -> power -> Griffin-Lim, {GRIFFIN_LIM_ITERS} iterations)",
            "griffin_lim": f"upper bound, not from tokens: Griffin-Lim ({GRIFFIN_LIM_ITERS} "
            "iterations) from the unquantised 80-bin log-mel of the original audio",
        },
        "vocoder_beats_token_mel_inversion_on_stoi": systems["vocoder"]["stoi"]["mean"]
        > systems["token_mel_inversion"]["stoi"]["mean"],
        "metrics": "STOI (pystoi); MCD = MFCC mel-cepstral distortion in dB over c1..c12, frames "
        "within 40 dB of the loudest (mmllm.eval.metrics.mel_cepstral_distortion)",
        "systems": systems,
        "dwer": dwer or "not measured (no --asr)",
        "wavs": written,
        "per_utterance": per_utterance,
        "cache_tokenizer_hash": card["tokenizer_hash"],
    }
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("num_utterances", "systems")}, indent=1))
    print(f"written {args.out} and {len(written)} WAVs under {wav_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
