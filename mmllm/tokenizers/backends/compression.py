"""Neural codecs from transformers: EnCodec, DAC and Mimi (encode and decode).

    encodec  EncodecModel, 24 kHz, 75 Hz, 1024 codes; bandwidth_kbps 1.5/3/6/12/24 -> 2/4/8/16/32
             codebooks (required: EnCodec silently takes 1.5 kbps when none is given)
    dac      DacModel, 16/24/44.1 kHz by weights, frame rate = sample rate / hop length,
             1024 codes; num_codebooks <= the model's n_codebooks (default: all)
    mimi     MimiModel, 24 kHz, 12.5 Hz, 2048 codes; num_codebooks (default 8, as Moshi)

`weights` is a hub id (facebook/encodec_24khz, descript/dac_16khz, kyutai/mimi) or a
local directory written by `save_pretrained` (how the tests build tiny random models).

Exact batching. Every item is zero-padded to whole frames (ceil(T / hop) frames, the
last one completed with zeros), alone or in a batch; `frame_lengths` = ceil(T / hop) and
frames beyond hold PAD_CODE. The models' own right padding (reflect in EnCodec, replicate
in Mimi's last conv) would fill a partial last frame differently alone than in a batch,
so we never let them pad a partial frame. Then:

- EnCodec 24 kHz and Mimi are causal (causal convs, a unidirectional LSTM, causal
  sliding-window attention): a frame reads only samples up to its own end, so one padded
  batch gives each item exactly its alone codes. Cost: none.
- DAC's encoder is not causal: frame j reads samples [j*hop - 2501, j*hop + 2812] (the
  16/24 kHz strides; from the conv stack, `conv_receptive_field`), so an item's last 8
  frames read its batch padding, whose activations differ from the zeros the convs pad
  with alone. We encode the padded batch once, then re-encode, for every item shorter
  than the longest, a window of its last 16 frames (8 frames of left context + the 8
  frames to fix), all windows as one more batch of equal length, and splice the windows'
  last 8 frames in. Items of at most 16 frames are encoded in groups of equal length.
  Cost: one extra forward over 16 frames (0.32 s of audio at 16 kHz) per shorter item;
  measured on CPU with the 16 kHz architecture: +2% for 4 items of 2.3-5 s, +0.3% for 8
  items of 2-6 s. Decoding DAC groups items of equal frame length (the decoder is not
  causal either).

Equal inputs, equal codes, up to floating point: another batch shape can change the
summation order inside a conv or matmul (differences around 1e-7), which flips a code
only where two codewords are that close to a tie. The tests see no flip on tiny random
models; EnCodec's ranking by |x|^2 - 2 x.c + |c|^2 amplifies such noise when latents sit
far from the origin relative to the distances between codewords.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmllm.tokenizers.base import (
    PAD_CODE,
    AudioTokenizer,
    TokenizerConfig,
    mask_padding,
    register_tokenizer,
)
from mmllm.tokenizers.hf import (
    as_normal_tensor,
    check_batch,
    check_fields,
    check_options,
    conv_receptive_field,
    equal_length_groups,
    load_pretrained,
    pad_to_whole_frames,
    sample_mask,
)

ENCODEC_BANDWIDTHS_KBPS = (1.5, 3.0, 6.0, 12.0, 24.0)


class _CodecTokenizer(AudioTokenizer):
    """Shared encode/decode around a transformers codec; subclasses run the model itself."""

    can_decode = True
    hop_length: int  # samples per code frame
    model: nn.Module

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Samples -> ceil(T / hop) code frames (a partial last frame counts)."""
        return (torch.as_tensor(lengths).long() + self.hop_length - 1) // self.hop_length

    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device)

    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, T] float at `sample_rate`, lengths [B] -> (codes [B, K, F] int64, frame_lengths [B])."""
        lengths = check_batch(wav, lengths)
        padded, frame_lengths = pad_to_whole_frames(
            wav.to(self.device, torch.float32), lengths.to(self.device), self.hop_length
        )
        if padded.shape[1] == 0:
            codes = torch.zeros(wav.shape[0], self.num_codebooks, 0, dtype=torch.long)
        else:
            with torch.inference_mode():
                codes = self._encode_padded(padded, frame_lengths)
            expected = (wav.shape[0], self.num_codebooks, int(frame_lengths.max()))
            assert tuple(codes.shape) == expected, (
                f"{self.name}: codes {tuple(codes.shape)} != {expected}"
            )
        codes = mask_padding(as_normal_tensor(codes).long(), frame_lengths)
        return codes.to(wav.device), frame_lengths.to(wav.device)

    def decode(
        self, codes: torch.Tensor, frame_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [B, K, F], frame_lengths [B] -> (wav [B, max(frame_lengths) * hop], lengths = frame_lengths * hop)."""
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise ValueError(
                f"{self.name}: codes must be [B, K={self.num_codebooks}, F], got {tuple(codes.shape)}"
            )
        frame_lengths = torch.as_tensor(frame_lengths, device=codes.device).long()
        frames = int(frame_lengths.max()) if len(frame_lengths) else 0
        lengths = frame_lengths * self.hop_length
        if frames == 0:
            return torch.zeros(codes.shape[0], 0, device=codes.device), lengths
        valid = codes[..., :frames].to(self.device)
        # PAD_CODE (and anything past each length) is no codeword: decode code 0 there, cut after.
        valid = valid.masked_fill(valid == PAD_CODE, 0)
        with torch.inference_mode():
            audio = self._decode_codes(valid.long(), frame_lengths.to(self.device))
        audio = as_normal_tensor(audio)[:, : frames * self.hop_length]
        audio = audio * sample_mask(lengths.to(audio.device), audio.shape[1])
        return audio.to(codes.device), lengths

    def _encode_padded(self, wav: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """wav [B, F_max * hop] (zero beyond each item's frames) -> codes [B, K, F_max]."""
        raise NotImplementedError

    def _decode_codes(self, codes: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """codes [B, K, F] (valid codewords everywhere) -> wav [B, >= F * hop]."""
        raise NotImplementedError

    def _check_num_codebooks(self, available: int, default: int, minimum: int = 1) -> int:
        wanted = self.cfg.num_codebooks if self.cfg.num_codebooks is not None else default
        if not minimum <= wanted <= available:
            raise ValueError(
                f"tokenizer {self.name!r}: num_codebooks must be in [{minimum}, {available}] "
                f"for {self.cfg.weights!r}, got {wanted}"
            )
        return wanted


@register_tokenizer("encodec")
class EncodecTokenizer(_CodecTokenizer):
    """EnCodec (transformers.EncodecModel) at a fixed, explicit bandwidth."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        check_fields(cfg, {"weights", "bandwidth_kbps", "num_codebooks"})
        check_options(cfg, set())
        if cfg.bandwidth_kbps is None:
            raise ValueError(
                "tokenizer 'encodec': `bandwidth_kbps` is required (one of 1.5, 3, 6, 12, 24): "
                "EnCodec silently falls back to its lowest bandwidth (1.5 kbps, 2 codebooks) "
                "when none is given"
            )
        from transformers import EncodecModel

        self.model = load_pretrained(EncodecModel, cfg, "facebook/encodec_24khz")
        config = self.model.config
        if config.chunk_length_s is not None or config.normalize:
            raise ValueError(
                f"tokenizer 'encodec': {cfg.weights!r} encodes in normalized chunks (the 48 kHz "
                f"model), whose per-chunk scales are not codes; use a 24 kHz EnCodec"
            )
        if config.audio_channels != 1:
            raise ValueError(f"tokenizer 'encodec': {cfg.weights!r} is not a mono model")
        bandwidths = [float(b) for b in config.target_bandwidths]
        if float(cfg.bandwidth_kbps) not in bandwidths:
            raise ValueError(
                f"tokenizer 'encodec': bandwidth_kbps {cfg.bandwidth_kbps} is not one of the "
                f"model's bandwidths {bandwidths}"
            )
        self.bandwidth = float(cfg.bandwidth_kbps)
        self.hop_length = int(math.prod(config.upsampling_ratios))
        self.sample_rate = int(config.sampling_rate)
        self.frame_rate_hz = self.sample_rate / self.hop_length
        self.codebook_size = int(config.codebook_size)
        self.num_codebooks = int(
            self.model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth)
        )
        if cfg.num_codebooks is not None and cfg.num_codebooks != self.num_codebooks:
            raise ValueError(
                f"tokenizer 'encodec': num_codebooks {cfg.num_codebooks} contradicts "
                f"bandwidth_kbps {cfg.bandwidth_kbps} ({self.num_codebooks} codebooks); "
                f"set only bandwidth_kbps"
            )

    def _encode_padded(self, wav: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        # padding_mask zeroes the same samples pad_to_whole_frames already zeroed; passed so
        # that the model never pads on its own.
        mask = sample_mask(frame_lengths * self.hop_length, wav.shape[1])
        out = self.model.encode(wav[:, None], padding_mask=mask[:, None], bandwidth=self.bandwidth)
        return out.audio_codes[0]  # [chunks=1, B, K, F] -> [B, K, F]

    def _decode_codes(self, codes: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes[None], [None]).audio_values[:, 0]


@register_tokenizer("dac")
class DacTokenizer(_CodecTokenizer):
    """Descript Audio Codec (transformers.DacModel); exact batching by re-encoding tails."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        check_fields(cfg, {"weights", "num_codebooks"})
        check_options(cfg, set())
        from transformers import DacModel

        self.model = load_pretrained(DacModel, cfg, "descript/dac_16khz")
        config = self.model.config
        self.hop_length = int(config.hop_length)
        self.sample_rate = int(config.sampling_rate)
        self.frame_rate_hz = self.sample_rate / self.hop_length
        self.codebook_size = int(config.codebook_size)
        self.num_codebooks = self._check_num_codebooks(config.n_codebooks, config.n_codebooks)
        # Encoder frames whose inputs cross an edge: the right edge of an item (its batch
        # padding) or the left edge of a tail window (missing context). The quantizer is
        # per frame, so the encoder's conv stack is the whole receptive field.
        first, last = conv_receptive_field(
            [m for m in self.model.encoder.modules() if isinstance(m, nn.Conv1d)]
        )
        self.tail_frames = max(0, math.ceil((last + 1) / self.hop_length) - 1)
        self.context_frames = max(0, math.ceil(-first / self.hop_length))

    def _run(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model.encode(wav[:, None], n_quantizers=self.num_codebooks).audio_codes

    def _encode_padded(self, wav: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        codes = self._run(wav)
        longest = int(frame_lengths.max())
        window = self.context_frames + self.tail_frames
        hop = self.hop_length
        shorter = frame_lengths < longest  # the longest items saw no padding: already exact
        if self.tail_frames == 0 or not bool(shorter.any()):
            return codes
        # Long items: re-encode their last `window` frames alone, all windows in one batch.
        tails = torch.nonzero(shorter & (frame_lengths > window)).flatten().tolist()
        if tails:
            ends = [int(frame_lengths[i]) for i in tails]
            windows = torch.stack(
                [
                    wav[i, (end - window) * hop : end * hop]
                    for i, end in zip(tails, ends, strict=True)
                ]
            )
            fixed = self._run(windows)[..., self.context_frames :]  # [n, K, tail_frames]
            for row, (i, end) in enumerate(zip(tails, ends, strict=True)):
                codes[i, :, end - self.tail_frames : end] = fixed[row]
        # Short items: the whole item is within reach of its padding; encode by equal length.
        short = torch.nonzero(shorter & (frame_lengths <= window)).flatten()
        for group in equal_length_groups(frame_lengths[short]):
            items = short[group.to(short.device)]
            frames = int(frame_lengths[items[0]])
            if frames > 0:
                codes[items, :, :frames] = self._run(wav[items, : frames * hop])
        return codes

    def _decode_codes(self, codes: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        audio = codes.new_zeros(
            codes.shape[0], codes.shape[-1] * self.hop_length, dtype=torch.float32
        )
        for group in equal_length_groups(frame_lengths):
            items = group.to(codes.device)
            frames = int(frame_lengths[items[0]])
            if frames == 0:
                continue
            out = self.model.decode(audio_codes=codes[items, :, :frames]).audio_values
            width = min(out.shape[-1], frames * self.hop_length)
            audio[items, :width] = out[:, :width]
        return audio


@register_tokenizer("mimi")
class MimiTokenizer(_CodecTokenizer):
    """Mimi (transformers.MimiModel), the codec of Moshi; codebook 0 is semantic."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        check_fields(cfg, {"weights", "num_codebooks"})
        check_options(cfg, set())
        from transformers import MimiModel

        self.model = load_pretrained(MimiModel, cfg, "kyutai/mimi")
        config = self.model.config
        self.hop_length = int(config.frame_size)
        self.sample_rate = int(config.sampling_rate)
        self.frame_rate_hz = self.sample_rate / self.hop_length
        self.codebook_size = int(config.codebook_size)
        self.num_codebooks = self._check_num_codebooks(
            config.num_quantizers, min(8, config.num_quantizers), config.num_semantic_quantizers
        )

    def _encode_padded(self, wav: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        mask = sample_mask(frame_lengths * self.hop_length, wav.shape[1])
        out = self.model.encode(
            wav[:, None], padding_mask=mask[:, None], num_quantizers=self.num_codebooks
        )
        return out.audio_codes

    def _decode_codes(self, codes: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes).audio_values[:, 0]
