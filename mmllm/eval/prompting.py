"""Prompting a trained checkpoint: `Checkpoint` (vocab, text tokenizer, audio tokenizer
configs, model loading), prompts from files or text, and the CLI behind
`mmllm generate`.

Prompting CLI (thin: `main` parses, `run_cli` calls `Checkpoint`, `build_prompt`, `generate`):

    mmllm generate --checkpoint DIR asr speech.wav
    mmllm generate --checkpoint DIR sv enrollment.wav trial.wav
    mmllm generate --checkpoint DIR tts "some text" --speaker ID --out out.wav
    mmllm generate --checkpoint DIR ks clips/ [--jsonl]        one batched call, a line per input
    mmllm generate --checkpoint DIR tts --text-file lines.txt --speaker ID --out wavs/

Several inputs (files, directories, list files: mmllm.eval.prompt_inputs) go through the
batched engine in one call and print `input<TAB>answer` per input (`--jsonl`: a JSON object
per line); audio answers are written under the --out directory.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmllm.config import ConfigError, load_config
from mmllm.corpus.schema import TASKS
from mmllm.data.patterns import MULTI_STREAM
from mmllm.data.templates import SV_ANSWERS, TemplateRenderer
from mmllm.data.vocab import VOCAB_FILENAME, MultimodalVocab
from mmllm.eval.generation import (
    AUDIO_ANSWER_SPANS,
    TEXT_ANSWER_TASKS,
    AnswerGrammar,
    GenerationConfig,
    decode_audio,
    decode_text,
    generate,
)
from mmllm.eval.prompt_inputs import GenerateError, Request, expand_requests
from mmllm.fileio import IntegrityError, verify_manifest
from mmllm.pretrain.config import ANSWERS_FILENAME, PRETRAIN_CONFIG_FILENAME, load_run_config
from mmllm.runtime import resolve_device, resolve_dtype
from mmllm.tokenizers.base import TokenizerConfig
from mmllm.tokenizers.portable import load_packaged_tokenizer


def answer_rendered(
    model: Any,
    checkpoint: Checkpoint,
    rendered: list[Any],
    task: str,
    config: GenerationConfig,
    allowed: dict[str, list[str]] | None = None,
) -> list[list[int]]:
    """Constrained answers to rendered rows (their prompts, and placeholder rows for
    continuous / summed input)."""
    return generate(
        model,
        [r.prompt for r in rendered],
        checkpoint.vocab,
        config,
        tasks=task,
        grammar=checkpoint.grammar(),
        allowed_texts=allowed,
        features=[r.prompt_features for r in rendered],
    )


@dataclass
class Checkpoint:
    """A trained checkpoint's vocab, text tokenizer and configs (the model loads on demand)."""

    directory: Path
    vocab: MultimodalVocab
    tokenizer: Any
    pattern: str
    input_config: TokenizerConfig
    output_config: TokenizerConfig
    audio_input: str = "discrete"  # discrete | continuous | summed (mmllm.modeling.continuous)
    feature_stack: int = 1
    answers: dict | None = None  # the run's answer sets (mmllm.pretrain.pipeline.answer_sets)

    @classmethod
    def open(cls, directory: str | Path) -> Checkpoint:
        from transformers import AutoTokenizer

        directory = Path(directory)
        if not directory.is_dir():
            raise GenerateError(f"checkpoint {directory}: directory not found")
        for name in (VOCAB_FILENAME, PRETRAIN_CONFIG_FILENAME):
            if not (directory / name).is_file():
                raise GenerateError(f"checkpoint {directory}: no {name} (not an mmllm checkpoint?)")
        try:
            verify_manifest(directory)
        except IntegrityError as err:
            raise GenerateError(f"checkpoint {err}") from None
        try:
            vocab = MultimodalVocab.load(directory)
            pretrain = load_run_config(directory / PRETRAIN_CONFIG_FILENAME)
            section = pretrain.tokenizers
            input_config = load_packaged_tokenizer(directory, "input")  # exports carry them
            output_config = load_packaged_tokenizer(directory, "output")
            if input_config is None:  # exported before they did: the run's own paths
                input_config = load_config(TokenizerConfig, section.input, section.input_overrides)
            if output_config is None:
                output_config = input_config
                if section.output:
                    output_config = load_config(
                        TokenizerConfig, section.output, section.output_overrides
                    )
            tokenizer = AutoTokenizer.from_pretrained(directory)
            answers_file = directory / ANSWERS_FILENAME
            answers = json.loads(answers_file.read_text()) if answers_file.is_file() else None
        except (ConfigError, ValueError, OSError) as err:
            raise GenerateError(f"checkpoint {directory}: {one_line(err)}") from None
        continuous = pretrain.audio_input == "continuous"  # its input tokenizer gives features
        for config in (output_config,) if continuous else (input_config, output_config):
            if config.name not in vocab.blocks:
                raise GenerateError(
                    f"checkpoint {directory}: its vocab has no audio tokenizer {config.name!r} "
                    f"(has {vocab.tokenizers})"
                )
        return cls(
            directory,
            vocab,
            tokenizer,
            pretrain.data.pattern,
            input_config,
            output_config,
            pretrain.audio_input,
            pretrain.continuous.stack,
            answers,
        )

    def check_request(self, task: str, speaker: str | None, allowed: Sequence[str] | None) -> None:
        """Refuse a TTS speaker or allowed labels the run never trained on (checkpoints
        exported before answer sets were recorded are not checked)."""
        if self.answers is None:
            return
        speakers = self.answers.get("tts_speakers", [])
        if task == "tts" and speakers and speaker not in speakers:
            shown = ", ".join(speakers[:8]) + (", ..." if len(speakers) > 8 else "")
            raise GenerateError(
                f"--speaker {speaker!r}: not a speaker this checkpoint was trained to speak as "
                f"({len(speakers)} known: {shown})"
            )
        labels = self.answers.get("labels", {}).get(task)
        unknown = [a for a in allowed or () if labels and a not in labels]
        if unknown:
            raise GenerateError(
                f"--allowed {unknown}: not {task} labels of this checkpoint (known: "
                f"{', '.join(labels)})"
            )

    def renderer(self) -> TemplateRenderer:
        return TemplateRenderer(
            self.vocab,
            self.tokenizer,
            self.input_config.name,
            self.output_config.name,
            self.pattern,
            audio_input=self.audio_input,
            feature_stack=self.feature_stack,
        )

    def context_length(self) -> int:
        """The model's context in tokens (config.json's max_position_embeddings; 1024 when
        the architecture does not say), read without loading the model."""
        try:
            config = json.loads((self.directory / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise GenerateError(
                f"checkpoint {self.directory}/config.json: {one_line(err)}"
            ) from None
        return int(config.get("max_position_embeddings", 1024))

    def grammar(self) -> AnswerGrammar:
        return AnswerGrammar(self.vocab, self.tokenizer, self.output_config.name, self.pattern)

    def audio_tokenizer(self, which: str) -> Any:
        """Build the "input" or "output" audio tokenizer, checked against the vocab."""
        from mmllm.tokenizers.registry import build_tokenizer

        config = self.input_config if which == "input" else self.output_config
        try:
            tokenizer = build_tokenizer(config)  # its `device` (default auto) says where
        except (ValueError, OSError) as err:
            raise GenerateError(f"{which} tokenizer {config.name!r}: {one_line(err)}") from None
        if which == "input" and self.audio_input == "continuous":
            return tokenizer  # features, not codes: nothing in the vocab to match
        block = self.vocab.block(config.name)
        if (tokenizer.num_codebooks, tokenizer.codebook_size) != (
            block.num_codebooks,
            block.codebook_size,
        ):
            raise GenerateError(
                f"{which} tokenizer {config.name!r} gives {tokenizer.num_codebooks} x "
                f"{tokenizer.codebook_size} codes, the checkpoint vocab {block.num_codebooks} x "
                f"{block.codebook_size}"
            )
        return tokenizer

    def load_model(self, device: str = "auto", dtype: str = "auto") -> Any:
        """The model, in eval mode, on `device` in `dtype` ("auto": CUDA in bf16 where
        present, else the CPU in fp32; mmllm.runtime.resolve_device / resolve_dtype)."""
        device = resolve_device(device)
        model = self._load_model()
        return model.to(device=device, dtype=resolve_dtype(dtype, device)).eval()

    def _load_model(self) -> Any:
        from mmllm.modeling.model import load_pretrained_multimodal

        model, _, _ = load_pretrained_multimodal(self.directory, verify=False)  # open() did
        if self.pattern in MULTI_STREAM:  # delay / depth: codebook weights + audio heads
            from mmllm.modeling.continuous import load_projector
            from mmllm.modeling.multicodebook import load_audio_heads, multicodebook_lm

            weights = load_projector(self.directory, model.get_input_embeddings())
            heads, config = load_audio_heads(self.directory)
            return multicodebook_lm(
                model,
                self.vocab,
                self.output_config.name,
                self.pattern,
                heads=heads,
                codebook_weights=weights,
                frame_fraction=config.get("frame_fraction", 1.0),
            )
        if self.audio_input != "discrete":
            from mmllm.modeling.continuous import ContinuousInputLM, load_projector

            projector = load_projector(self.directory, model.get_input_embeddings())
            model = ContinuousInputLM(model, projector, self.vocab.audio_embed_id)
        return model


def render_prompt(renderer: TemplateRenderer, row: dict, input_codes: Any) -> Any:
    """The generation prompt of a row that has no target (placeholder target codes/label:
    `render` builds the whole example; use `.prompt` and, for continuous / summed input and
    the delay / depth patterns, `.prompt_features`)."""
    k = renderer.vocab.block(renderer.output_tokenizer).num_codebooks
    row = {**row, "label": row.get("label") or next(iter(SV_ANSWERS))}
    return renderer.render(row, input_codes, lambda key: np.zeros((k, 1), np.int64))


def encode_audio_file(path: str | Path, tokenizer: Any) -> np.ndarray:
    """Read an audio file (anything soundfile reads) and encode it -> codes [K, F]."""
    from mmllm.audio.io import load_audio

    wav, _ = load_audio(path, target_sr=tokenizer.sample_rate, name=f"input audio {path}")
    codes, frames = tokenizer.encode(torch.from_numpy(wav)[None], torch.tensor([wav.shape[0]]))
    return codes[0, :, : int(frames[0])].cpu().numpy()


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def build_prompt(
    checkpoint: Checkpoint, task: str, inputs: Sequence[str], speaker: str | None = None
) -> Any:
    """The rendered prompt (`.prompt` ids, `.prompt_features` for placeholder rows) for
    one task from CLI-style inputs: audio file paths (sv: enrollment then trial) or, for
    tts, the text to speak (with `speaker`)."""
    codes: dict[str, np.ndarray] = {}
    if task != "tts":
        input_tokenizer = checkpoint.audio_tokenizer("input")
        keys = ["prompt#ref0", "prompt"] if task == "sv" else ["prompt"]
        for key, path in zip(keys, inputs, strict=True):
            codes[key] = encode_audio_file(path, input_tokenizer)
    row = {
        "id": "prompt",
        "task": task,
        "text": inputs[0] if task == "tts" else "",
        "label": "",
        "speaker": speaker or "",
        "words": [],
    }
    return render_prompt(checkpoint.renderer(), row, codes.__getitem__)


def _check_arguments(args: argparse.Namespace) -> tuple[list[Request], bool]:
    """Every check that needs neither the checkpoint nor the model -> (requests, batch)."""
    task = args.task
    if task not in TASKS:
        raise GenerateError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    requests, batch = expand_requests(task, args.inputs, args.text_file)
    if task == "tts" and not args.speaker:
        raise GenerateError("tts: --speaker is required (a speaker id seen in training)")
    if task in AUDIO_ANSWER_SPANS and args.out is None:
        where = "DIRECTORY for the WAVs" if batch else "FILE.wav"
        raise GenerateError(f"task {task} writes audio: --out {where} is required")
    if args.out is not None and not batch and Path(args.out).is_dir():
        raise GenerateError(f"--out {args.out}: is a directory; give a FILE.wav")
    if args.out is not None and batch and Path(args.out).is_file():
        raise GenerateError(f"--out {args.out}: is a file; several inputs need a DIRECTORY")
    if args.allowed is not None and not all(a.strip() for a in args.allowed):
        raise GenerateError("--allowed: empty answer among the allowed strings")
    try:
        device = torch.device(resolve_device(args.device))
        resolve_dtype(args.dtype, str(device))
    except (RuntimeError, ValueError) as err:
        raise GenerateError(f"--device {args.device!r}: {one_line(err)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerateError(f"--device {args.device}: CUDA is not available on this machine")
    generation_config(args, max_new_tokens=1)  # sampling options, checked before any loading
    return requests, batch


def generation_config(args: argparse.Namespace, max_new_tokens: int) -> GenerationConfig:
    """The CLI's generation settings; a bad sampling option raises GenerateError."""
    try:
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            batch_size=args.batch_size,
            do_sample=args.sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
    except ValueError as err:  # pydantic's ValidationError: keep its messages only
        errors = err.errors() if hasattr(err, "errors") else [{"msg": str(err)}]
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in errors)
        raise GenerateError(f"generation options: {one_line(problems)}") from None


def _write_audio(spans: list[torch.Tensor], tokenizer: Any, out: Path) -> list[Path]:
    """Decode each span's codes [K, F] and write out (ss: out-1.wav, out-2.wav)."""
    from mmllm.audio.io import write_wav

    if not spans or any(c.shape[-1] == 0 for c in spans):
        raise GenerateError(f"{out}: the model wrote no audio frames (raise --max-new-tokens?)")
    paths = []
    for j, codes in enumerate(spans):
        path = out if len(spans) == 1 else out.with_name(f"{out.stem}-{j + 1}{out.suffix}")
        try:
            wav, lengths = tokenizer.decode(codes[None], torch.tensor([codes.shape[-1]]))
        except (RuntimeError, ValueError) as err:  # e.g. too few frames for the decoder
            raise GenerateError(
                f"output tokenizer {tokenizer.name!r} cannot decode {codes.shape[-1]} frame(s): "
                f"{one_line(err)}"
            ) from None
        wav = wav[0, : int(lengths[0])].float().cpu().numpy()
        write_wav(path, wav, tokenizer.sample_rate)
        paths.append(path)
    return paths


def _output_paths(requests: list[Request], task: str, out: Path, batch: bool) -> list[Path]:
    """Where each request's audio answer goes: --out itself for one prompt; in the --out
    directory, tts NNNN.wav, se/ss the input's file name (NNNN-name when names repeat)."""
    if not batch:
        return [out]
    if task == "tts":
        return [out / f"{i:04d}.wav" for i in range(len(requests))]
    stems = [Path(r.inputs[0]).stem for r in requests]
    unique = len(set(stems)) == len(stems)
    return [out / (f"{s}.wav" if unique else f"{i:04d}-{s}.wav") for i, s in enumerate(stems)]


def run_cli(args: argparse.Namespace) -> list[str]:
    """The CLI's work: check, prompt, generate (all prompts batched), decode. Returns the
    lines to print: the answer alone for one prompt, else one line per input."""
    requests, batch = _check_arguments(args)
    task = args.task
    checkpoint = Checkpoint.open(args.checkpoint)
    output_tokenizer = None
    if task in AUDIO_ANSWER_SPANS:
        output_tokenizer = checkpoint.audio_tokenizer("output")
        if not output_tokenizer.can_decode:
            raise GenerateError(
                f"output tokenizer {checkpoint.output_config.name!r} cannot decode audio "
                "(train a vocoder with `mmllm vocoder` and set `vocoder:` in its config)"
            )
    checkpoint.check_request(task, args.speaker, args.allowed)
    rendered = [build_prompt(checkpoint, task, r.inputs, args.speaker) for r in requests]
    context = checkpoint.context_length()
    for request, prompt in zip(requests, rendered, strict=True):
        if len(prompt.prompt) >= context:  # before loading the model: no room for an answer
            what = (
                f"the text ({len(request.inputs[0])} characters)"
                if task == "tts"
                else ("the input audio " + " + ".join(request.inputs))
            )
            raise GenerateError(
                f"{what} makes a prompt of {len(prompt.prompt)} tokens; the model's context is "
                f"{context} tokens, with room for the answer: give a shorter input"
            )
    model = checkpoint.load_model(args.device, args.dtype)
    max_new = args.max_new_tokens
    if max_new is None:  # text: a sentence; audio: what the model's context still holds
        longest = max(len(r.prompt) for r in rendered)
        max_new = 128 if task in TEXT_ANSWER_TASKS else max(context - longest, 1)
    allowed = args.allowed or (sorted(SV_ANSWERS.values()) if task == "sv" else None)
    answers = generate(
        model,
        [r.prompt for r in rendered],
        checkpoint.vocab,
        generation_config(args, max_new),
        tasks=task,
        grammar=checkpoint.grammar(),
        allowed_texts=allowed,
        features=[r.prompt_features for r in rendered],
    )
    if task in TEXT_ANSWER_TASKS:
        texts = [decode_text(ids, checkpoint.tokenizer, checkpoint.vocab) for ids in answers]
        results: list[str | list[str]] = list(texts)
    else:
        if batch:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        outs = _output_paths(requests, task, Path(args.out), batch)
        results = []
        for ids, out in zip(answers, outs, strict=True):
            spans = decode_audio(
                ids, checkpoint.vocab, checkpoint.output_config.name, checkpoint.pattern
            )
            written = _write_audio(spans, output_tokenizer, out)
            results.append([str(path) for path in written])
    return _answer_lines(requests, results, task, batch, args.jsonl)


def _answer_lines(
    requests: list[Request],
    results: list[str | list[str]],
    task: str,
    batch: bool,
    jsonl: bool,
) -> list[str]:
    if jsonl:
        key = "answer" if task in TEXT_ANSWER_TASKS else "wavs"
        return [
            json.dumps({"input": r.name, key: result}, ensure_ascii=False)
            for r, result in zip(requests, results, strict=True)
        ]
    if task in TEXT_ANSWER_TASKS:
        if not batch:
            return [str(results[0])]
        return [f"{r.name}\t{result}" for r, result in zip(requests, results, strict=True)]
    if not batch:
        return [f"wrote {path}" for path in results[0]]
    return [f"{r.name}\t{','.join(result)}" for r, result in zip(requests, results, strict=True)]
