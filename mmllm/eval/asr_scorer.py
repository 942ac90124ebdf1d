"""The ASR that scores dWER (`mmllm.eval.metrics.dwer`): it transcribes generated or processed speech.

    scorer = load_asr("openai/whisper-large-v3", GenerationConfig())  # or an mmllm checkpoint dir
    scorer.name                      # "whisper:openai/whisper-large-v3": what reports print
    scorer.transcribe(wavs, 16000)   # [N] float arrays [T] at one rate -> [N] strings

`CheckpointAsr`: an mmllm checkpoint's own `asr` prompt (offline, any run trained on ASR).
`WhisperAsr`: a transformers speech-seq2seq checkpoint (hub id or local directory; Whisper in
practice), batched, greedy, English transcription, outputs through `normalize_text` (the rule
`metrics.wer` scores by). Audio past the feature extractor's window (30 s for Whisper) is cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmllm.audio.io import resample
from mmllm.data.vocab import VOCAB_FILENAME
from mmllm.eval.generation import GenerationConfig, decode_text
from mmllm.eval.prompting import Checkpoint, GenerateError, answer_rendered, one_line
from mmllm.runtime import resolve_device
from mmllm.text.normalize import normalize_text


class AsrError(GenerateError):
    """The ASR named for dWER does not load; the message names it."""


class CheckpointAsr:
    """An mmllm checkpoint used as the ASR of dWER: encode audio with its input tokenizer,
    prompt `asr`, decode the transcript."""

    def __init__(
        self,
        directory: str | Path,
        config: GenerationConfig,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        self.checkpoint = Checkpoint.open(directory)
        self.model = self.checkpoint.load_model(device, dtype)
        self.tokenizer = self.checkpoint.audio_tokenizer("input")
        self.config = config
        self.name = f"mmllm:{self.checkpoint.directory}"

    def transcribe(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[str]:

        renderer = self.checkpoint.renderer()
        prompts = []
        for i, wav in enumerate(wavs):
            wav = resample(wav.astype(np.float32), sample_rate, self.tokenizer.sample_rate)
            codes, frames = self.tokenizer.encode(
                torch.from_numpy(wav)[None], torch.tensor([wav.shape[0]])
            )
            codes = codes[0, :, : int(frames[0])].numpy()
            row = {"id": str(i), "task": "asr", "text": "", "label": "", "speaker": "", "words": []}
            prompts.append(renderer.render(row, lambda key, c=codes: c))
        outputs = answer_rendered(self.model, self.checkpoint, prompts, "asr", self.config)
        return [
            decode_text(ids, self.checkpoint.tokenizer, self.checkpoint.vocab) for ids in outputs
        ]


class WhisperAsr:
    """A transformers speech-seq2seq model (`AutoProcessor` + `AutoModelForSpeechSeq2Seq`),
    on the GPU when there is one. Multilingual Whisper is told English transcription;
    English-only models take no language."""

    def __init__(self, spec: str, batch_size: int = 16, device: str | None = None) -> None:
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = AutoProcessor.from_pretrained(spec)
        self.model = AutoModelForSpeechSeq2Seq.from_pretrained(spec, dtype=torch.float32)
        self.model = self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.sample_rate = self.processor.feature_extractor.sampling_rate
        multilingual = getattr(self.model.generation_config, "is_multilingual", False)
        self.generate_kwargs = {"language": "en", "task": "transcribe"} if multilingual else {}
        self.name = f"{self.model.config.model_type}:{spec}"

    def transcribe(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        audio = [resample(np.asarray(w, np.float32), sample_rate, self.sample_rate) for w in wavs]
        texts = []
        for start in range(0, len(audio), self.batch_size):
            batch = audio[start : start + self.batch_size]
            inputs = self.processor(batch, sampling_rate=self.sample_rate, return_tensors="pt")
            with torch.no_grad():
                ids = self.model.generate(**inputs.to(self.device), **self.generate_kwargs)
            texts += self.processor.batch_decode(ids, skip_special_tokens=True)
        return [normalize_text(t) for t in texts]


def load_asr(
    spec: str | Path, config: GenerationConfig, device: str = "auto", dtype: str = "auto"
) -> CheckpointAsr | WhisperAsr:
    """`CheckpointAsr` for a directory holding mmllm_vocab.json, else `WhisperAsr` (hub id or
    transformers directory); `AsrError` naming `spec` when it does not load."""
    if (Path(spec) / VOCAB_FILENAME).is_file():
        try:
            return CheckpointAsr(spec, config, device, dtype)
        except (GenerateError, OSError, ValueError) as err:
            raise AsrError(
                f"ASR {spec}: the mmllm checkpoint does not load: {one_line(err)}"
            ) from None
    try:
        return WhisperAsr(str(spec), batch_size=config.batch_size, device=resolve_device(device))
    except (OSError, ValueError, KeyError) as err:
        raise AsrError(
            f"ASR {spec}: neither an mmllm checkpoint (no {VOCAB_FILENAME}) nor a transformers "
            f"speech-seq2seq model that loads (hub id not cached offline?): {one_line(err)}"
        ) from None
