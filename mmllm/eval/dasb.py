"""DASB tasks as prompted generation on a trained checkpoint, with their metrics.

    report = evaluate_checkpoint("runs/pretrain/default/final", ["asr", "ks", "sv"], out_dir)

For every task the test rows of the checkpoint's own corpus are rendered with the training
templates, the prompt (without its target) goes to batched constrained generation
(`mmllm.eval.generation`), and the answer is scored:

    asr           WER and CER (mmllm.eval.metrics: one normaliser)
    ks ic er sid  accuracy of the generated label; answers are constrained to the task's
                  label set (from the train split), anything else would count as unparseable
    sv            EER over the trial list from score = log p(yes) - log p(no) of the answer
                  (teacher-forced), and accuracy of the higher-scoring answer
    se ss tts     audio answers; if the output tokenizer decodes (mel-rvq, EnCodec, ...):
                  SE: SI-SNR improvement, STOI, PESQ against the clean reference; SS: PIT
                  SI-SNR improvement. With an ASR (`mmllm.eval.asr_scorer`: Whisper or an mmllm
                  checkpoint) dWER too: SE: ASR(answer) vs ASR(clean reference); SS: each
                  estimate vs the source PIT pairs it with, both through the ASR; TTS:
                  ASR(answer) vs the text. `dwer_asr` names the ASR.
                  Every audio task also reports code-level agreement with the reference
                  tokens (frames equal / frames compared) and the length ratio, which need
                  no decoder (mfcc-kmeans and the SSL k-means decode only through a vocoder)

Text-answer tasks (asr and the label tasks) also report `audio_nats`, how much the model
listens: the teacher-forced log-likelihood of each reference answer with the row's own audio
minus with the audio of the next row (`listening`). Near 0, the answers come from the
model's prior over answers, not from the audio (what a model that writes fluent but wrong
transcripts does).

Each task writes `<task>.json` (metrics, counts, settings) and `<task>.jsonl` (one line per
row: id, reference, answer) under `out_dir`, so every number traces back to outputs;
`dasb.json` gathers all tasks with the checkpoint's tokenizer, bitrate and input kind (a
later run on other tasks of the same checkpoint and split adds to it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mmllm.config import config_to_dict
from mmllm.corpus.reader import load_task
from mmllm.data.cache import CacheError, read_cache_card, token_cache_dir
from mmllm.data.mixture import TokenCaches, source_rows
from mmllm.data.templates import SV_ANSWERS
from mmllm.eval import metrics
from mmllm.eval.asr_scorer import load_asr
from mmllm.eval.generation import (
    AUDIO_ANSWER_SPANS,
    GenerationConfig,
    decode_audio,
    decode_text,
)
from mmllm.eval.prompting import Checkpoint, GenerateError, answer_rendered
from mmllm.fileio import atomic_write_text
from mmllm.pretrain.config import PRETRAIN_CONFIG_FILENAME, load_run_config

LABEL_TASKS = ("ks", "ic", "er", "sid")


AUDIO_LIMIT = 40  # audio answers are long: rows per audio task unless `limit` says otherwise


class EvalData:
    """Rows, prompts and reference codes of one checkpoint's corpus."""

    def __init__(self, checkpoint: Checkpoint, split: str) -> None:
        self.checkpoint = checkpoint
        self.pretrain = load_run_config(checkpoint.directory / PRETRAIN_CONFIG_FILENAME)
        self.corpus = Path(self.pretrain.corpus.path)
        cache_root = self.pretrain.tokenizers.cache_dir
        inputs = token_cache_dir(cache_root, checkpoint.input_config)
        outputs = token_cache_dir(cache_root, checkpoint.output_config)
        try:  # the caches must hold the codes of the checkpoint's own tokenizers
            read_cache_card(inputs, checkpoint.input_config)
            read_cache_card(outputs, checkpoint.output_config)
        except CacheError as err:
            raise GenerateError(f"checkpoint {checkpoint.directory}: {err}") from None
        self.caches = TokenCaches.open(inputs, outputs)
        self.split = split
        self.renderer = checkpoint.renderer()

    def rows(self, task: str, limit: int | None) -> list[dict]:
        rows = source_rows(self.corpus, task, self.split)
        return rows[:limit] if limit else rows

    def prompts(self, task: str, rows: list[dict]) -> list[Any]:
        """Rendered rows (prompt ids, and placeholder rows for continuous / summed input)."""
        inputs, outputs = self.caches.lookups(task, self.split)
        return [self.renderer.render(row, inputs, outputs) for row in rows]

    def fitting(
        self, task: str, rows: list[dict], context: int
    ) -> tuple[list[dict], list[tuple[str, int]]]:
        """(the rows whose prompt and reference answer fit the model's `context`, [(id,
        tokens)] of those that do not): a longer row cannot be answered, only cut off."""
        kept, too_long = [], []
        for row, rendered in zip(rows, self.prompts(task, rows), strict=True):
            tokens = len(rendered.prompt) + len(rendered.target)
            if tokens <= context:
                kept.append(row)
            else:
                too_long.append((row["id"], tokens))
        return kept, too_long

    def labels(self, task: str) -> list[str]:
        return sorted({row["label"] for row in source_rows(self.corpus, task, "train")})


def score_answers(
    model: Any,
    prompts: list[list[int]],
    answers: list[list[int]],
    features: list[np.ndarray | None] | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Teacher-forced log p(answer | prompt) [N] (sum over the answer's tokens), batched with
    right padding (positions beyond a row's length never influence it: causal attention).
    `features`: continuous / summed input rows per prompt (mmllm.modeling.continuous)."""
    device = model.get_input_embeddings().weight.device
    features = features or [None] * len(prompts)
    scores = []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        chunk = list(zip(prompts[start:stop], answers[start:stop], strict=True))
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, (prompt, answer) in enumerate(chunk):
            ids[row, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        extra = {}
        frames = [f for f in features[start:stop] if f is not None]
        if frames:
            extra["audio_features"] = torch.from_numpy(np.concatenate(frames)).to(device)
        # logits only where some row's answer is predicted (never the [B, L, V] window)
        spans = [range(len(p) - 1, len(p) + len(a) - 1) for p, a in chunk]
        keep = sorted(set().union(*spans))
        column = {position: i for i, position in enumerate(keep)}
        with torch.no_grad():
            logits = model(
                input_ids=ids.to(device), logits_to_keep=torch.tensor(keep).to(device), **extra
            ).logits
        for row, ((_, answer), span) in enumerate(zip(chunk, spans, strict=True)):
            picked = logits[row, [column[t] for t in span]].float().log_softmax(-1).cpu()
            scores.append(picked[torch.arange(len(answer)), torch.tensor(answer)].sum())
    return torch.stack(scores)


def listening(model: Any, data: EvalData, task: str, rows: list[dict], rendered: list[Any]) -> dict:
    """How much a text answer depends on the audio, in nats per answer (target + end token).
    `rendered`: the rows as `data.prompts` renders them (each with its own audio).

    logp_own_audio:    mean log p(reference | the row's own audio)
    logp_other_audio:  mean log p(reference | the audio of the next row, rows[(i + 1) % N])
    gain:              their difference; 0 means the audio is ignored. It is not bounded by
                       log(number of labels): a model that listens is confidently wrong with
                       another row's audio. On the embedded default, a KS-only run at 85%
                       accuracy gains 15.5 nats per answer; an ASR run that writes fluent but
                       wrong transcripts 7.2 of its ~33 nats per transcript (README).
    """
    inputs, outputs = data.caches.lookups(task, data.split)
    swapped = []
    for i, row in enumerate(rows):
        other = rows[(i + 1) % len(rows)]["id"]
        own_id = row["id"]  # keys are the row id, or "<id>#ref<j>" for extra streams
        lookup = lambda key, own_id=own_id, other=other: inputs(other + key[len(own_id) :])  # noqa: E731
        swapped.append(data.renderer.render(row, lookup, outputs))
    targets = [r.target for r in rendered]
    own = score_answers(
        model, [r.prompt for r in rendered], targets, [r.prompt_features for r in rendered]
    )
    other = score_answers(
        model, [r.prompt for r in swapped], targets, [r.prompt_features for r in swapped]
    )
    answer_tokens = sum(len(t) for t in targets)
    return {
        "logp_own_audio": float(own.mean()),
        "logp_other_audio": float(other.mean()),
        "gain": float((own - other).mean()),
        "gain_per_token": float((own - other).sum() / max(answer_tokens, 1)),
    }


def _text_task(model, data, task, rows, config) -> tuple[dict, list[dict]]:
    checkpoint = data.checkpoint
    rendered = data.prompts(task, rows)
    allowed = {task: data.labels(task)} if task in LABEL_TASKS else None
    outputs = answer_rendered(model, checkpoint, rendered, task, config, allowed)
    answers = [decode_text(ids, checkpoint.tokenizer, checkpoint.vocab) for ids in outputs]
    references = [row["text"] if task == "asr" else row["label"] for row in rows]
    if task == "asr":
        word, char = metrics.wer(references, answers), metrics.cer(references, answers)
        result = {"wer": word.rate, "cer": char.rate, "word_errors": vars(word)}
    else:
        acc = metrics.accuracy(references, answers, allowed[task])
        result = {"accuracy": acc.accuracy, "correct": acc.correct, "unparseable": acc.unparseable}
    result["audio_nats"] = listening(model, data, task, rows, rendered)
    result["breakdown"] = text_breakdown(task, rows, references, answers, allowed)
    lines = [
        {"id": r["id"], "speaker": row_speaker(r), "reference": ref, "answer": a}
        for r, ref, a in zip(rows, references, answers, strict=True)
    ]
    return result, lines


def row_speaker(row: dict) -> str:
    """The speaker of a row's audio; "none" for rows without speech (KS `_silence_`)."""
    return row.get("speaker") or "none"


def text_breakdown(
    task: str,
    rows: list[dict],
    references: list[str],
    answers: list[str],
    allowed: dict[str, list[str]] | None,
) -> dict[str, Any]:
    """Where a text task's errors are: its metric per test speaker (and per label for label
    tasks, with the most frequent confusions), so a score can be traced to voices and words.
    rows, references, answers [N]; ASR scores WER per speaker, label tasks accuracy. SID's
    labels are its speakers, so it gets no separate per-speaker table."""

    def score(indices: list[int]) -> float:
        refs, hyps = [references[i] for i in indices], [answers[i] for i in indices]
        if task == "asr":
            return metrics.wer(refs, hyps).rate
        return metrics.accuracy(refs, hyps, allowed[task]).accuracy

    metric = "wer" if task == "asr" else "accuracy"
    breakdown: dict[str, Any] = {"metric": metric}
    if task != "sid":
        speakers = [row_speaker(r) for r in rows]
        breakdown["per_speaker"] = metrics.per_group(speakers, score, metric != "wer")
    if task != "asr":
        breakdown["per_label"] = metrics.per_group(references, score)
        breakdown["confusions"] = metrics.confusions(references, answers)
    return breakdown


def _sv_task(model, data, rows) -> tuple[dict, list[dict]]:
    checkpoint = data.checkpoint
    rendered = data.prompts("sv", rows)
    prompts, features = [r.prompt for r in rendered], [r.prompt_features for r in rendered]
    eos = checkpoint.vocab.eos_task_id
    encode = lambda text: list(checkpoint.tokenizer.encode(text, add_special_tokens=False)) + [eos]  # noqa: E731
    yes = score_answers(model, prompts, [encode(SV_ANSWERS["same"])] * len(prompts), features)
    no = score_answers(model, prompts, [encode(SV_ANSWERS["different"])] * len(prompts), features)
    score = (yes - no).numpy()
    is_target = np.array([row["label"] == "same" for row in rows])
    result = {
        "eer": metrics.equal_error_rate(score, is_target),
        "accuracy": float(((score > 0) == is_target).mean()),
        "trials": len(rows),
    }
    lines = [
        {"id": r["id"], "reference": r["label"], "score": float(s)}
        for r, s in zip(rows, score, strict=True)
    ]
    return result, lines


def _audio_task(model, data, task, rows, config, decoder, asr) -> tuple[dict, list[dict]]:
    """Generate audio answers; code-level agreement always, signal metrics when decodable."""
    from mmllm.audio.io import decode_audio_value

    checkpoint = data.checkpoint
    rendered = data.prompts(task, rows)
    spans = AUDIO_ANSWER_SPANS[task]
    # room for the reference answer's length plus half again (the constraint closes spans in time)
    longest = max(len(r.target) for r in rendered)
    cfg = GenerationConfig(
        **{**config_to_dict(config), "max_new_tokens": int(longest * 1.5) + 4 * spans}
    )
    started = time.perf_counter()
    outputs = answer_rendered(model, checkpoint, rendered, task, cfg)
    seconds = time.perf_counter() - started
    _, output_codes = data.caches.lookups(task, data.split)
    keys = {"tts": ["{id}"], "se": ["{id}#ref0"], "ss": ["{id}#ref0", "{id}#ref1"]}[task]
    equal = compared = 0
    length_ratios, signal, lines, asr_pairs = [], {}, [], []
    full_rows = load_task(data.corpus, task)[data.split] if decoder is not None else None
    for index, (row, ids) in enumerate(zip(rows, outputs, strict=True)):
        generated = decode_audio(
            ids, checkpoint.vocab, checkpoint.output_config.name, checkpoint.pattern
        )
        references = [output_codes(key.format(id=row["id"])) for key in keys]
        for gen, ref in zip(generated, references, strict=False):
            n = min(gen.shape[-1], ref.shape[-1])
            equal += int((gen[:, :n].numpy() == ref[:, :n]).sum())
            compared += ref.size
            length_ratios.append(gen.shape[-1] / max(ref.shape[-1], 1))
        line = {"id": row["id"], "frames": [int(g.shape[-1]) for g in generated]}
        if decoder is not None and len(generated) == spans and all(g.shape[-1] for g in generated):
            wavs = [_decode(decoder, g) for g in generated]
            full_row = full_rows[index]  # the same row with its audio and references
            values, pairs = _signal_metrics(
                task, full_row, wavs, decoder.sample_rate, decode_audio_value, signal
            )
            line |= values
            asr_pairs += pairs
        lines.append(line)
    frames = sum(sum(line["frames"]) for line in lines)
    result = {
        "code_agreement": equal / max(compared, 1),
        "length_ratio": float(np.mean(length_ratios)) if length_ratios else 0.0,
        "rows": len(rows),
        "decoded": decoder is not None,
        # generation speed: seconds of audio written per second of batched generation
        "generation_seconds": seconds,
        "audio_s_per_s": frames / data.caches.output.frame_rate_hz / max(seconds, 1e-9),
    }
    for name, values in signal.items():
        result[name] = len(values) if name == "pesq_failed" else float(np.mean(values))
    if asr is not None and asr_pairs:
        result |= score_dwer(asr, asr_pairs, decoder.sample_rate)
    if decoder is None:
        result["not_decoded"] = (
            f"output tokenizer {checkpoint.output_config.name!r} cannot decode audio "
            "(train one with tokenizers/train_vocoder.py and name it in the tokenizer config's "
            "`vocoder`); code-level agreement only"
        )
    return result, lines


def _decode(decoder: Any, codes: torch.Tensor) -> np.ndarray:
    wav, lengths = decoder.decode(codes[None], torch.tensor([codes.shape[-1]]))
    return wav[0, : int(lengths[0])].float().cpu().numpy()


def _fit(wav: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length, dtype=np.float64)
    out[: min(length, wav.shape[0])] = wav[:length]
    return out


def _signal_metrics(task, row, wavs, sample_rate, load, signal) -> tuple[dict, list[tuple]]:
    """SE: SI-SNRi / STOI / PESQ vs the clean reference; SS: PIT SI-SNRi vs the sources; TTS:
    mel-cepstral distance (DTW-aligned) to the row's audio, the same text in the same voice.
    Also the (reference, decoded answer) pairs dWER compares: SE (clean audio, answer), SS
    (source j, the estimate PIT matched to it), TTS (text, answer)."""
    mixture = load(row["audio"], sample_rate, name=row["id"])
    if task == "se":
        clean = load(row["refs"][0], sample_rate, name=f"{row['id']}#ref0")
        estimate = _fit(wavs[0], clean.shape[0])
        values = {
            "si_snr_improvement": metrics.si_snr_improvement(
                estimate, clean, _fit(mixture, clean.shape[0])
            ),
            "stoi": metrics.stoi(clean, estimate, sample_rate),
        }
        try:
            values["pesq"] = metrics.pesq(clean, estimate, sample_rate)
        except metrics.PesqRefused:  # no speech found in the signal: counted, not averaged
            signal.setdefault("pesq_failed", []).append(1.0)
        pairs = [(clean, wavs[0])]
    elif task == "ss":
        sources = [load(ref, sample_rate, name=row["id"]) for ref in row["refs"]]
        length = min(s.shape[0] for s in sources)
        references = np.stack([s[:length] for s in sources])
        estimates = np.stack([_fit(w, length) for w in wavs])
        best = metrics.permutation_invariant_si_snr(estimates, references)
        baseline = np.mean([metrics.si_snr(_fit(mixture, length), r) for r in references])
        values = {"si_snr_improvement": best.si_snr - baseline}
        # estimates[permutation[j]] is matched to sources[j]
        pairs = [(source, wavs[i]) for source, i in zip(sources, best.permutation, strict=True)]
    else:  # tts: against the corpus's rendering of the same text and voice, DTW-aligned
        values = {
            "mcd_db": metrics.mel_cepstral_distortion(mixture, wavs[0], sample_rate, align="dtw")
        }
        pairs = [(row["text"], wavs[0])]
    for name, value in values.items():
        signal.setdefault(name, []).append(value)
    return values, pairs


def score_dwer(asr: Any, pairs: list[tuple], sample_rate: int) -> dict:
    """dWER of decoded answers: pairs of (reference, answer wav [T]); a reference is a text
    (TTS) or a wav that goes through the same ASR (SE, SS). Returns `dwer` and `dwer_asr`
    (the scorer's name), or `dwer_undefined` when the references hold no words."""
    references, answers = zip(*pairs, strict=True)
    wavs = [r for r in references if not isinstance(r, str)]
    heard = asr.transcribe(wavs + list(answers), sample_rate)
    heard_references = iter(heard[: len(wavs)])
    truth = [r if isinstance(r, str) else next(heard_references) for r in references]
    result = {"dwer_asr": asr.name}
    try:
        result["dwer"] = metrics.dwer(truth, heard[len(wavs) :]).rate
    except ValueError as err:  # e.g. the ASR hears no word in any reference
        result["dwer_undefined"] = str(err)
    return result


def input_settings(model: Any, pretrain: Any) -> dict[str, Any]:
    """How input audio entered the LLM, beyond the tokenizer's options: the projector's
    `input_norm` and `output_rms` (absent: PyTorch's default init) for continuous input,
    `model.audio_input_rms` for token rows drawn at that scale. Empty when all are default."""
    if pretrain.audio_input == "continuous":
        config = model.projector.config
        settings = {
            "input_norm": model.projector.input_norm,
            "output_rms": config.get("output_rms"),
        }
    else:
        settings = {"audio_input_rms": pretrain.model.resolved_audio_input_rms()}
    return {key: value for key, value in settings.items() if value is not None}


def evaluate_checkpoint(
    directory: str | Path,
    tasks: Sequence[str],
    out_dir: str | Path,
    split: str = "test",
    limit: int | None = None,
    config: GenerationConfig | None = None,
    asr: str | Path | None = None,
    vocoder: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> dict:
    """Run `tasks` on a checkpoint; write per-task JSON + JSONL and `dasb.json` to out_dir.
    `asr`: the ASR of dWER for tts / se / ss (`mmllm.eval.asr_scorer.load_asr`: an mmllm checkpoint
    directory or a Whisper hub id / directory). `device`, `dtype`: where the model and the
    ASR run ("auto": CUDA in bf16 where present, else the CPU in fp32)."""
    config = config or GenerationConfig(max_new_tokens=96, batch_size=32)
    checkpoint = Checkpoint.open(directory)
    data = EvalData(checkpoint, split)
    model = checkpoint.load_model(device, dtype)
    context = checkpoint.context_length()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    decoder = None
    if any(t in AUDIO_ANSWER_SPANS for t in tasks):
        if vocoder is not None:  # decode audio answers through a trained token vocoder
            checkpoint.output_config = dataclasses.replace(
                checkpoint.output_config, vocoder=str(vocoder)
            )
        output_tokenizer = checkpoint.audio_tokenizer("output")
        decoder = output_tokenizer if output_tokenizer.can_decode else None
    scorer = None
    if asr is not None and any(t in AUDIO_ANSWER_SPANS for t in tasks):  # fails before tasks run
        scorer = load_asr(asr, config, device, dtype)
    report = {
        "checkpoint": str(directory),
        "split": split,
        "audio_input": data.pretrain.audio_input,
        "pattern": data.pretrain.data.pattern,
        "input_tokenizer": checkpoint.input_config.name,
        "input_options": dict(checkpoint.input_config.options),
        "output_tokenizer": checkpoint.output_config.name,
        "vocoder": str(vocoder) if vocoder else None,
        "bitrate_bps": data.caches.input.bitrate_bps,
        "input_settings": input_settings(model, data.pretrain),
        "generation": config_to_dict(config),
        "tasks": {},
    }
    previous = out_dir / "dasb.json"
    if previous.is_file():  # tasks evaluated before keep their results (same checkpoint, split)
        earlier = json.loads(previous.read_text())
        if (earlier.get("checkpoint"), earlier.get("split")) == (str(directory), split):
            report["tasks"] = {t: r for t, r in earlier["tasks"].items() if t not in tasks}
    for task in tqdm(tasks, desc="dasb", unit="task"):
        rows = data.rows(task, limit or (AUDIO_LIMIT if task in AUDIO_ANSWER_SPANS else None))
        rows, too_long = data.fitting(task, rows, context)
        for row_id, tokens in too_long:
            tqdm.write(
                f"skipped {task} row {row_id}: its prompt and answer take {tokens} tokens, "
                f"the model's context is {context}"
            )
        if not rows:  # nothing fits: the report says so, with the rows it skipped
            result, lines = {}, []
        elif task == "sv":
            result, lines = _sv_task(model, data, rows)
        elif task in AUDIO_ANSWER_SPANS:
            result, lines = _audio_task(model, data, task, rows, config, decoder, scorer)
        else:
            result, lines = _text_task(model, data, task, rows, config)
        result["rows"] = len(rows)
        result["skipped_too_long"] = [row_id for row_id, _ in too_long]
        report["tasks"][task] = result
        atomic_write_text(out_dir / f"{task}.json", json.dumps(result, indent=1))
        atomic_write_text(out_dir / f"{task}.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
        # after every task, so a run stopped half-way keeps what it finished
        atomic_write_text(out_dir / "dasb.json", json.dumps(report, indent=1))
        headline = {key: value for key, value in result.items() if key != "breakdown"}
        tqdm.write(f"{task}: {json.dumps(headline)}")
    return report
