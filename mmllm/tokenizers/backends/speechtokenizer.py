"""SpeechTokenizer (hybrid: RVQ codebook 0 distilled from HuBERT, 1-7 acoustic), 16 kHz, 50 Hz, 8 x 1024.

Runs through the `speechtokenizer` package, imported inside the constructor: the package
needs torchaudio, which is absent here (torchaudio 2.11 does not load against torch 2.13),
so on these machines building this tokenizer raises an ImportError that says so and names
the alternatives. Importing this module never fails.

`weights`: a hub id (fnlp/SpeechTokenizer) or a local directory holding `config.json`
and a `.pt` checkpoint, either at its top or in `options.subfolder` (default
speechtokenizer_hubert_avg, the layout of the hub repository).

Exact batching: the encoder is non-causal (symmetric convs and a bidirectional LSTM), so
padding would leak into every frame. Items are zero-padded to whole frames and encoded in
groups of equal frame length (one forward per distinct length); decoding likewise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmllm.runtime import resolve_device
from mmllm.tokenizers.base import (
    PAD_CODE,
    AudioTokenizer,
    TokenizerConfig,
    mask_padding,
    register_tokenizer,
)
from mmllm.tokenizers.hf import (
    OFFLINE_TOKENIZERS,
    WeightsUnavailableError,
    as_normal_tensor,
    check_batch,
    check_fields,
    check_options,
    equal_length_groups,
    hub_reachable,
    looks_like_path,
    offline_message,
    pad_to_whole_frames,
    require_weights,
    sample_mask,
)

HOP_LENGTH = 320  # 16 kHz / 50 Hz: strides 8 x 5 x 4 x 2
DEFAULT_SUBFOLDER = "speechtokenizer_hubert_avg"


def _import_speechtokenizer():
    try:
        from speechtokenizer import SpeechTokenizer
    except (ImportError, OSError) as err:  # a broken torchaudio raises OSError on load
        raise ImportError(
            "tokenizer 'speechtokenizer' needs the `speechtokenizer` package, which imports "
            "torchaudio; torchaudio is not installed here (its current release fails to load "
            f"against torch 2.13 on these CPU machines). Underlying error: {err}. "
            "Alternatives: mimi (codebook 0 distilled from WavLM) or encodec through "
            "transformers, wavlm-kmeans / hubert-kmeans for semantic units, or the offline "
            f"tokenizers {', '.join(OFFLINE_TOKENIZERS)}"
        ) from err
    return SpeechTokenizer


def _checkpoint_files(cfg: TokenizerConfig) -> tuple[Path, Path]:
    """-> (config.json, checkpoint .pt) from a local directory or the hub (cache first)."""
    weights = require_weights(cfg, "fnlp/SpeechTokenizer")
    subfolder = cfg.options.get("subfolder", DEFAULT_SUBFOLDER)
    root = Path(weights).expanduser()
    if not root.is_dir():
        if looks_like_path(weights):
            raise FileNotFoundError(
                f"tokenizer 'speechtokenizer': weights directory {weights!r} does not exist"
            )
        from huggingface_hub import snapshot_download

        patterns = [f"{subfolder}/*.json", f"{subfolder}/*.pt"]
        try:
            root = Path(snapshot_download(weights, allow_patterns=patterns, local_files_only=True))
        except Exception:
            if not hub_reachable():
                raise WeightsUnavailableError(offline_message(cfg.name, weights)) from None
            root = Path(snapshot_download(weights, allow_patterns=patterns))
    for folder in (root, root / subfolder):
        checkpoints = sorted(folder.glob("*.pt"))
        if (folder / "config.json").is_file() and checkpoints:
            return folder / "config.json", checkpoints[0]
    raise FileNotFoundError(
        f"tokenizer 'speechtokenizer': no config.json + .pt checkpoint in {root} or {root / subfolder}"
    )


@register_tokenizer("speechtokenizer")
class SpeechTokenizerTokenizer(AudioTokenizer):
    """The `speechtokenizer` package's model; codes [B, K<=8, F] at 50 Hz."""

    can_decode = True
    sample_rate = 16000
    frame_rate_hz = 50.0
    codebook_size = 1024

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        check_fields(cfg, {"weights", "num_codebooks"})
        check_options(cfg, {"subfolder"})
        model_cls = _import_speechtokenizer()
        config_path, checkpoint = _checkpoint_files(cfg)
        self.model = model_cls.load_from_checkpoint(str(config_path), str(checkpoint))
        self.model = self.model.to(device=resolve_device(cfg.device), dtype=torch.float32).eval()
        available = int(self.model.n_q)
        self.num_codebooks = cfg.num_codebooks if cfg.num_codebooks is not None else available
        if not 1 <= self.num_codebooks <= available:
            raise ValueError(
                f"tokenizer 'speechtokenizer': num_codebooks must be in [1, {available}], "
                f"got {self.num_codebooks}"
            )
        if int(self.model.sample_rate) != self.sample_rate:
            raise ValueError(
                f"tokenizer 'speechtokenizer': {checkpoint} is a {self.model.sample_rate} Hz model; "
                f"only the 16 kHz models are supported"
            )

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(lengths).long() + HOP_LENGTH - 1) // HOP_LENGTH

    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, T] at 16 kHz, lengths [B] -> (codes [B, K, F] int64, frame_lengths [B])."""
        lengths = check_batch(wav, lengths)
        device = torch.device(self.cfg.device)
        padded, frame_lengths = pad_to_whole_frames(
            wav.to(device, torch.float32), lengths.to(device), HOP_LENGTH
        )
        frames = int(frame_lengths.max()) if len(frame_lengths) else 0
        codes = torch.zeros(
            wav.shape[0], self.num_codebooks, frames, dtype=torch.long, device=device
        )
        with torch.inference_mode():
            for group in equal_length_groups(frame_lengths):
                items = group.to(device)
                count = int(frame_lengths[items[0]])
                if count == 0:
                    continue
                out = self.model.encode(
                    padded[items, None, : count * HOP_LENGTH], n_q=self.num_codebooks
                )  # [K, n, count]
                codes[items, :, :count] = out.permute(1, 0, 2)[..., :count].long()
        codes = mask_padding(as_normal_tensor(codes), frame_lengths)
        return codes.to(wav.device), frame_lengths.to(wav.device)

    def decode(
        self, codes: torch.Tensor, frame_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [B, K, F], frame_lengths [B] -> (wav [B, max F * 320], lengths = F * 320)."""
        device = torch.device(self.cfg.device)
        frame_lengths = torch.as_tensor(frame_lengths, device=codes.device).long()
        lengths = frame_lengths * HOP_LENGTH
        total = int(lengths.max()) if len(lengths) else 0
        audio = torch.zeros(codes.shape[0], total, device=device)
        with torch.inference_mode():
            for group in equal_length_groups(frame_lengths):
                items = group.to(codes.device)
                count = int(frame_lengths[items[0]])
                if count == 0:
                    continue
                chunk = codes[items, :, :count].to(device)
                chunk = chunk.masked_fill(chunk == PAD_CODE, 0).permute(1, 0, 2)
                out = self.model.decode(chunk)[:, 0]  # [n, >= count * hop]
                audio[items.to(device), : count * HOP_LENGTH] = out[:, : count * HOP_LENGTH]
        audio = as_normal_tensor(audio) * sample_mask(lengths.to(device), total)
        return audio.to(codes.device), lengths
