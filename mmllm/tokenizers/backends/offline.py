"""Offline tokenizers: no pretrained weights, fitted on any corpus in minutes on a CPU.

- `mfcc-kmeans`: HuBERT's first-iteration units. 13 MFCCs (40 mels, 25 ms Hann window,
  10 ms hop) normalised with corpus mean/variance, two consecutive frames stacked into one
  26-dim frame at 50 Hz (20 ms, HuBERT's frame rate), one codebook of k = 500 k-means units.
  `options.cmvn: utterance` normalises each utterance with its own mean/variance
  instead (CMVN): a constant offset of the log spectrum (vocal tract, channel) cancels, so
  units depend less on who speaks. `options.deltas: true` appends each coefficient's delta
  and delta-delta (regression over +-2 frames, as HTK/Kaldi; HuBERT's first iteration
  clusters these 39-dim frames): 78 dims per 50 Hz frame. Deltas describe how the spectrum
  moves rather than where it sits, which differs less between voices. Decodes only through
  a trained vocoder (config key `vocoder`, mmllm.vocoder).
- `mel-rvq`: residual k-means over 80-bin log-mel frames (64 ms window, 20 ms hop = 50 Hz):
  codebook j quantizes what codebooks < j left over, so the first codebooks carry the coarse
  spectrum and later ones refine it (K = 4, k = 256 by default = 1.6 kbps). Decodable: the sum
  of the chosen centroids is a log-mel spectrogram, inverted to linear magnitude through the
  pseudo-inverse of the mel filter bank and to a waveform with Griffin-Lim (or with a trained
  vocoder when the config names one). `options.cmvn: utterance` normalises each utterance's
  log-mel bands with its own mean and variance before quantising (default `none`: raw
  log-mel). Without it the first codebook spends its 256 centroids mostly on level and
  voice (a gain change shifts all 80 bands at once); with it the codes describe the spectrum
  relative to the utterance's own average, as mfcc-kmeans' CMVN option. Decoding then puts
  back the corpus-average band levels stored with the centroids (`mel_mean`, `mel_std`):
  the speaker's own average envelope is not in the codes. `options.deltas: true` appends
  each band's delta and delta-delta (regression over +-2 code frames, i.e. +-40 ms) before the
  normalisation: 240 dims per frame, quantised together, so units tell apart frames whose
  spectrum moves differently (onsets) and not only where it sits. Decoding sums only the
  static 80 dims of the chosen centroids (what the spectrum is; the deltas only chose the unit).

Both take 16 kHz audio. Fit the centroids once, then point the config key `centroids` at them:

    python tokenizers/fit_kmeans.py --tokenizer configs/tokenizers/mel-rvq.yaml \
        --data data/synthdasb --out runs/tokenizers/mel-rvq

Frame convention: an item of T samples has F = ceil(T / 320) code frames; frame f is centred
on sample 320 f (the MFCC frames stacked into it on samples 320 f and 320 f + 160). Each item
is reflect-padded by half a window on both sides (zero-padded if it is shorter than that),
then zero-padded on the right, and the STFT runs with center=False: frame f of an item only
ever sees that item's own samples and padding, so encoding a right-padded batch gives
exactly the codes of encoding each item alone. Frames at or beyond F hold PAD_CODE.

Matrix products take different BLAS kernels for different batch shapes (a one-frame item
goes through another path than a 100-frame batch) and so differ in the last float32 bit.
Features are therefore computed in float64 and rounded to float32, and distances to the
centroids are computed in float64: a code can only differ between batch and single
encoding at a float64-level tie.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mmllm.audio.features import (
    GRIFFIN_LIM_ITERS,
    MFCC_DELTA_WIDTH,
    append_deltas,
    dct_matrix,
    framed_power,
    griffin_lim,
    mel_filters,
    utterance_cmvn,
)
from mmllm.tokenizers.base import (
    AudioTokenizer,
    TokenizerConfig,
    deduplicate_units,
    mask_padding,
    register_tokenizer,
)
from mmllm.tokenizers.hf import check_fields
from mmllm.tokenizers.kmeans import (
    assign,
    load_centroids,
)

SAMPLE_RATE = 16000


FRAME_RATE_HZ = 50


HOP_LENGTH = SAMPLE_RATE // FRAME_RATE_HZ  # 320 samples per code frame


# mfcc-kmeans features: 100 Hz MFCCs, two stacked per code frame.
MFCC_N_FFT = 400


MFCC_HOP = 160


MFCC_N_MELS = 40


N_MFCC = 13


MFCC_STACK = HOP_LENGTH // MFCC_HOP


MFCC_LOG_FLOOR = 1e-10  # as mmllm.audio.mfcc, so interior frames match it exactly


# mel-rvq features: 80-bin natural-log mel power at 50 Hz.
MEL_N_FFT = 1024


MEL_N_MELS = 80


MEL_LOG_FLOOR = 1e-5  # -11.5: digital silence should not dominate the clustering


DEFAULT_CODEBOOK_SIZE = {"mfcc-kmeans": 500, "mel-rvq": 256}


DEFAULT_NUM_CODEBOOKS = {"mfcc-kmeans": 1, "mel-rvq": 4}


DEFAULT_CMVN = {"mfcc-kmeans": "corpus", "mel-rvq": "none"}


OFFLINE_TOKENIZERS = tuple(DEFAULT_CODEBOOK_SIZE)


# What the features are; recorded in every card and checked when centroids are loaded, so
# centroids fitted on other features are refused instead of giving meaningless codes.
FEATURE_SPECS: dict[str, dict[str, Any]] = {
    "mfcc-kmeans": {
        "feature": "mfcc",
        "sample_rate": SAMPLE_RATE,
        "n_fft": MFCC_N_FFT,
        "hop_length": MFCC_HOP,
        "n_mels": MFCC_N_MELS,
        "n_mfcc": N_MFCC,
        "stack": MFCC_STACK,
        "log_floor": MFCC_LOG_FLOOR,
        "normalisation": "per-coefficient mean/std (mfcc_mean, mfcc_std)",
    },
    "mel-rvq": {
        "feature": "log-mel",
        "sample_rate": SAMPLE_RATE,
        "n_fft": MEL_N_FFT,
        "hop_length": HOP_LENGTH,
        "n_mels": MEL_N_MELS,
        "log_floor": MEL_LOG_FLOOR,
    },
}


# `options.cmvn` of mfcc-kmeans -> the "normalisation" entry of its feature spec. The
# corpus entry is the one cards have always carried, so centroids fitted before still load.
MFCC_NORMALISATIONS = {
    "corpus": "per-coefficient mean/std (mfcc_mean, mfcc_std)",
    "utterance": "per-utterance per-coefficient mean/std (CMVN over the utterance's frames)",
}


# `options.cmvn` of mel-rvq -> its feature spec's "normalisation" entry (none: no entry, so
# the cards of centroids fitted before the option still match).
MEL_NORMALISATIONS = {
    "none": None,
    "utterance": "per-utterance per-band mean/std (CMVN over the utterance's frames); "
    "decoded with the corpus-average levels (mel_mean, mel_std)",
}


CMVN_CHOICES = {"mfcc-kmeans": MFCC_NORMALISATIONS, "mel-rvq": MEL_NORMALISATIONS}


def feature_spec(name: str, cmvn: str, deltas: bool = False) -> dict[str, Any]:
    """What `name` computes (recorded in cards): it depends on `cmvn` and `deltas` (the key
    is only written when deltas are on, so cards fitted before still match)."""
    choices = CMVN_CHOICES[name]
    if cmvn not in choices:
        raise ValueError(
            f"{name}: config key 'options.cmvn' must be one of {list(choices)}, got {cmvn!r}"
        )
    spec = dict(FEATURE_SPECS[name])
    if choices[cmvn] is not None:
        spec["normalisation"] = choices[cmvn]
    if deltas:
        spec["deltas"] = f"delta + delta-delta, regression over +-{MFCC_DELTA_WIDTH} frames"
    return spec


def offline_deltas(cfg: TokenizerConfig) -> bool:
    """`options.deltas` of mfcc-kmeans / mel-rvq / mfcc-features (default false), checked to
    be a bool."""
    deltas = cfg.options.get("deltas", False)
    if not isinstance(deltas, bool):
        raise ValueError(
            f"{cfg.name}: config key 'options.deltas' must be true or false, got {deltas!r}"
        )
    return deltas


def mfcc_dim(deltas: bool) -> int:
    """Dims per 10 ms MFCC frame: 13, or 39 with delta and delta-delta."""
    return N_MFCC * (3 if deltas else 1)


def mel_dim(deltas: bool) -> int:
    """Dims per 50 Hz mel-rvq frame: 80 log-mel bands, or 240 with delta and delta-delta."""
    return MEL_N_MELS * (3 if deltas else 1)


def _fit_command(name: str) -> str:
    return (
        f"python tokenizers/fit_kmeans.py --tokenizer configs/tokenizers/{name}.yaml "
        f"--data SYNTHDASB_DIR --out DIR"
    )


def code_frame_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Samples [B] -> code frames [B] = ceil(T / 320)."""
    return torch.div(lengths.long() + HOP_LENGTH - 1, HOP_LENGTH, rounding_mode="floor")


def mfcc_frames(
    wav: torch.Tensor, lengths: torch.Tensor, deltas: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (unnormalised) 100 Hz MFCCs. wav [B, T] 16 kHz, lengths [B] ->
    (mfcc [B, 2 F, D], frame_lengths [B] = F, code frames), F = ceil(T / 320); D = 13, or
    39 with `deltas` (13 MFCC, 13 deltas, 13 delta-deltas)."""
    frame_lengths = code_frame_lengths(lengths)
    power = framed_power(wav, lengths, MFCC_N_FFT, MFCC_HOP, MFCC_STACK * frame_lengths)
    bank = mel_filters(SAMPLE_RATE, MFCC_N_FFT, MFCC_N_MELS, 0.0, SAMPLE_RATE / 2).to(power)
    logmel = torch.log(torch.clamp(power @ bank, min=MFCC_LOG_FLOOR))
    mfcc = logmel @ dct_matrix(MFCC_N_MELS, N_MFCC).to(logmel)
    if deltas:
        mfcc = append_deltas(mfcc, MFCC_STACK * frame_lengths)
    return mfcc.float(), frame_lengths


def offline_cmvn(cfg: TokenizerConfig) -> str:
    """`options.cmvn` of an offline tokenizer, or its default: mfcc-kmeans normalises the
    MFCCs with corpus (default) or utterance statistics, mel-rvq its log-mel with none
    (default) or utterance statistics."""
    return cfg.options.get("cmvn", DEFAULT_CMVN[cfg.name])


def cmvn_mfcc_frames(
    wav: torch.Tensor, lengths: torch.Tensor, cmvn: str, deltas: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """`mfcc_frames`, then per-utterance CMVN when `cmvn` is "utterance" (in float64, like
    the MFCCs: batch == alone to the bit); "corpus" leaves them raw for `stack_mfcc`."""
    mfcc, frame_lengths = mfcc_frames(wav, lengths, deltas)
    if cmvn == "utterance":
        mfcc = utterance_cmvn(mfcc.double(), MFCC_STACK * frame_lengths).float()
    return mfcc, frame_lengths


def stack_mfcc(mfcc: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[..., 2 F, D] raw MFCCs -> [..., F, 2 D] normalised, consecutive pairs concatenated."""
    normalised = (mfcc - mean.to(mfcc)) / std.to(mfcc)
    *lead, frames, dim = normalised.shape
    return normalised.reshape(*lead, frames // MFCC_STACK, MFCC_STACK * dim)


def log_mel_float64(wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`log_mel_frames` before normalisation and rounding: (log-mel [B, F, 80] float64,
    frame_lengths [B])."""
    frame_lengths = code_frame_lengths(lengths)
    power = framed_power(wav, lengths, MEL_N_FFT, HOP_LENGTH, frame_lengths)
    bank = mel_filters(SAMPLE_RATE, MEL_N_FFT, MEL_N_MELS, 0.0, SAMPLE_RATE / 2).to(power)
    return torch.log(torch.clamp(power @ bank, min=MEL_LOG_FLOOR)), frame_lengths


def mel_rvq_features(
    log_mel: torch.Tensor, frame_lengths: torch.Tensor, cmvn: str, deltas: bool
) -> torch.Tensor:
    """What mel-rvq quantises, from `log_mel_float64`'s output: log-mel [B, F, 80] float64 ->
    [B, F, 80] float32, or [B, F, 240] with `deltas` (bands, their deltas, delta-deltas).
    `cmvn` "utterance" then normalises every dim with the item's own mean/variance (in float64,
    like the spectrum: batch == alone to the bit); frames beyond an item's length are then 0."""
    if deltas:
        log_mel = append_deltas(log_mel, frame_lengths)
    if cmvn == "utterance":
        log_mel = utterance_cmvn(log_mel, frame_lengths)
    return log_mel.float()


def log_mel_frames(
    wav: torch.Tensor, lengths: torch.Tensor, cmvn: str = "none", deltas: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """50 Hz log-mel. wav [B, T] 16 kHz, lengths [B] -> (frames [B, F, 80], or [B, F, 240]
    with `deltas`; frame_lengths [B]), normalised as `mel_rvq_features` says."""
    log_mel, frame_lengths = log_mel_float64(wav, lengths)
    return mel_rvq_features(log_mel, frame_lengths, cmvn, deltas), frame_lengths


class _OfflineTokenizer(AudioTokenizer):
    """Shared set-up: config checks, centroid loading, the encode skeleton."""

    sample_rate = SAMPLE_RATE
    frame_rate_hz = float(FRAME_RATE_HZ)
    allowed_options: tuple[str, ...] = ()
    can_deduplicate = False  # config key `deduplicate`: collapse runs of repeated units

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        self._check_unused(cfg)
        self.device = torch.device(cfg.device)
        if cfg.centroids is None:
            raise ValueError(
                f"{self.name}: config key 'centroids' is unset; fit the centroids first with "
                f"`{_fit_command(self.name)}` and set centroids: DIR"
            )
        directory = Path(cfg.centroids)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"{self.name}: config key 'centroids' names {directory}, which does not exist; "
                f"create it with `{_fit_command(self.name)}`"
            )
        tensors, self.card = load_centroids(directory)
        if self.card.get("tokenizer") != self.name:
            raise ValueError(
                f"{directory}: centroids were fitted for {self.card.get('tokenizer')!r}, "
                f"not {self.name!r} (config key 'centroids')"
            )
        expected = self.feature_spec()
        if self.card.get("features") != expected:
            raise ValueError(
                f"{directory}: centroids were fitted on features {self.card.get('features')}, "
                f"this config computes {expected}; refit them with "
                f"`{_fit_command(self.name)}`"
            )
        self._load(tensors, directory)
        if cfg.codebook_size is not None and cfg.codebook_size != self.codebook_size:
            raise ValueError(
                f"{self.name}: config key 'codebook_size' is {cfg.codebook_size} but the "
                f"centroids in {directory} have k={self.codebook_size}"
            )

    def _check_unused(self, cfg: TokenizerConfig) -> None:
        if cfg.deduplicate and not self.can_deduplicate:
            raise ValueError(
                f"{self.name}: config key 'deduplicate' is for one codebook of units "
                f"(mfcc-kmeans); {self.name} decodes frame by frame"
            )
        check_fields(cfg, {"num_codebooks", "codebook_size", "deduplicate", "centroids", "vocoder"})
        if cfg.trust_remote_code:
            raise ValueError(f"{self.name}: config key 'trust_remote_code' is not used")
        unknown = sorted(set(cfg.options) - set(self.allowed_options))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown config key(s) {['options.' + k for k in unknown]}; "
                f"allowed: {['options.' + k for k in self.allowed_options]}"
            )
        self.feature_spec()  # refuses bad option values before anything is loaded

    def feature_spec(self) -> dict[str, Any]:
        """What this config computes; the centroids' card must record the same."""
        return feature_spec(self.name, offline_cmvn(self.cfg), offline_deltas(self.cfg))

    def _load(self, tensors: dict[str, torch.Tensor], directory: Path) -> None:
        raise NotImplementedError

    def _features(
        self, wav: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, T] on self.device -> (frames [B, F, D], frame_lengths [B])."""
        raise NotImplementedError

    def _quantize(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, D] -> codes [N, K]."""
        raise NotImplementedError

    @staticmethod
    def _tensor(tensors: dict[str, torch.Tensor], key: str, directory: Path) -> torch.Tensor:
        if key not in tensors:
            raise ValueError(f"{directory}: centroids file has no tensor {key!r}")
        return tensors[key].float()

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav [B, T] float32 at 16 kHz, lengths [B] -> (codes [B, K, F] int64, frame_lengths [B]).

        F = ceil(max length / 320); codes at or beyond ceil(lengths[b] / 320) are PAD_CODE.
        """
        if wav.dim() != 2:
            raise ValueError(f"{self.name}: wav must be [B, T], got shape {tuple(wav.shape)}")
        lengths = torch.as_tensor(lengths).long().cpu()
        if lengths.shape != (wav.shape[0],):
            raise ValueError(
                f"{self.name}: lengths must be [B={wav.shape[0]}], got {tuple(lengths.shape)}"
            )
        if wav.shape[0] and (int(lengths.min()) < 0 or int(lengths.max()) > wav.shape[1]):
            raise ValueError(f"{self.name}: lengths must lie in [0, T={wav.shape[1]}]")
        out_device = wav.device
        frames, frame_lengths = self._features(wav.to(self.device, torch.float32), lengths)
        batch, num_frames, dim = frames.shape
        codes = self._quantize(frames.reshape(-1, dim)).reshape(batch, num_frames, -1)
        codes = mask_padding(codes.permute(0, 2, 1), frame_lengths)
        if self.cfg.deduplicate:
            codes, frame_lengths = deduplicate_units(codes, frame_lengths)
        return codes.to(out_device), frame_lengths


@register_tokenizer("mfcc-kmeans")
class MfccKMeansTokenizer(_OfflineTokenizer):
    """13 MFCC (39 with deltas) x 2 stacked frames at 50 Hz -> one codebook of k k-means
    units (decodes only through a vocoder)."""

    num_codebooks = 1
    can_deduplicate = True
    allowed_options = ("cmvn", "deltas")

    def _check_unused(self, cfg: TokenizerConfig) -> None:
        super()._check_unused(cfg)
        if cfg.num_codebooks not in (None, 1):
            raise ValueError(
                f"mfcc-kmeans: config key 'num_codebooks' must be 1 or unset, got {cfg.num_codebooks}"
            )

    def _load(self, tensors: dict[str, torch.Tensor], directory: Path) -> None:
        self.centroids = self._tensor(tensors, "centroids", directory).to(self.device)
        self.mfcc_mean = self._tensor(tensors, "mfcc_mean", directory).to(self.device)
        self.mfcc_std = self._tensor(tensors, "mfcc_std", directory).to(self.device)
        dim = mfcc_dim(offline_deltas(self.cfg))
        if self.centroids.shape[1] != MFCC_STACK * dim or self.mfcc_mean.shape != (dim,):
            raise ValueError(
                f"{directory}: centroids have dim {self.centroids.shape[1]} and mfcc_mean "
                f"{tuple(self.mfcc_mean.shape)}, expected {MFCC_STACK * dim} and ({dim},)"
            )
        self.codebook_size = self.centroids.shape[0]

    def _features(self, wav, lengths):
        mfcc, frame_lengths = cmvn_mfcc_frames(
            wav, lengths, offline_cmvn(self.cfg), offline_deltas(self.cfg)
        )
        return stack_mfcc(mfcc, self.mfcc_mean, self.mfcc_std), frame_lengths

    def _quantize(self, frames):
        return assign(frames.double(), self.centroids)[:, None]


@register_tokenizer("mel-rvq")
class MelRvqTokenizer(_OfflineTokenizer):
    """Residual k-means over 80-bin log-mel frames at 50 Hz; decodes with Griffin-Lim.

    `num_codebooks` may be fewer than were fitted: residual codebooks truncate cleanly.
    options.griffin_lim_iters (default 32) sets the decoder's phase-reconstruction iterations;
    options.cmvn (none | utterance) how the log-mel is normalised before quantising;
    options.deltas (default false) quantises each frame with its deltas and delta-deltas.
    """

    can_decode = True
    allowed_options = ("griffin_lim_iters", "cmvn", "deltas")

    def _load(self, tensors: dict[str, torch.Tensor], directory: Path) -> None:
        codebooks = self._tensor(tensors, "codebooks", directory)  # [K, k, 80 or 240]
        dim = mel_dim(offline_deltas(self.cfg))
        if codebooks.dim() != 3 or codebooks.shape[2] != dim:
            raise ValueError(
                f"{directory}: codebooks must be [K, k, {dim}], got {tuple(codebooks.shape)}"
            )
        wanted = self.cfg.num_codebooks or codebooks.shape[0]
        if not 1 <= wanted <= codebooks.shape[0]:
            raise ValueError(
                f"mel-rvq: config key 'num_codebooks' is {wanted} but {directory} holds "
                f"{codebooks.shape[0]} codebooks"
            )
        self.codebooks = codebooks[:wanted].to(self.device)
        self.num_codebooks = wanted
        # The band levels decoding adds back: identity for raw log-mel; under per-utterance
        # CMVN the corpus averages of the utterances' own means and sds.
        self.mel_mean = torch.zeros(MEL_N_MELS, device=self.device)
        self.mel_std = torch.ones(MEL_N_MELS, device=self.device)
        if offline_cmvn(self.cfg) == "utterance":
            self.mel_mean = self._tensor(tensors, "mel_mean", directory).to(self.device)
            self.mel_std = self._tensor(tensors, "mel_std", directory).to(self.device)
        self.codebook_size = codebooks.shape[1]
        self.griffin_lim_iters = int(self.cfg.options.get("griffin_lim_iters", GRIFFIN_LIM_ITERS))
        bank = mel_filters(SAMPLE_RATE, MEL_N_FFT, MEL_N_MELS, 0.0, SAMPLE_RATE / 2).double()
        self.inverse_bank = torch.linalg.pinv(bank).float().to(self.device)  # [80, 513]

    def _features(self, wav, lengths):
        return log_mel_frames(wav, lengths, offline_cmvn(self.cfg), offline_deltas(self.cfg))

    def _quantize(self, frames):
        residual = frames.double()
        codes = []
        for codebook in self.codebooks.double():
            index = assign(residual, codebook)
            residual = residual - codebook[index]
            codes.append(index)
        return torch.stack(codes, dim=1)

    def reconstruct_log_mel(self, codes: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """codes [B, K', F] (K' <= K, first K' codebooks) -> log-mel [B, F, 80]: the sum of the
        chosen centroids' 80 static bands (under `options.cmvn: utterance` scaled back with the
        corpus-average band levels); frames beyond frame_lengths are silence (the log floor)."""
        if codes.dim() != 3 or codes.shape[1] > self.num_codebooks:
            raise ValueError(
                f"mel-rvq: codes must be [B, K<={self.num_codebooks}, F], got {tuple(codes.shape)}"
            )
        codes = codes.to(self.device)
        valid = (
            torch.arange(codes.shape[-1], device=self.device)[None, :]
            < frame_lengths.to(self.device)[:, None]
        )  # [B, F]
        inside = codes.masked_fill(~valid[:, None, :], 0)
        if inside.numel() and (int(inside.min()) < 0 or int(inside.max()) >= self.codebook_size):
            raise ValueError(
                f"mel-rvq: codes within frame_lengths must lie in [0, {self.codebook_size})"
            )
        log_mel = torch.zeros(*valid.shape, MEL_N_MELS, device=self.device)
        for j in range(codes.shape[1]):
            log_mel += self.codebooks[j][inside[:, j]][..., :MEL_N_MELS]
        log_mel = log_mel * self.mel_std + self.mel_mean
        return log_mel.masked_fill(~valid[..., None], math.log(MEL_LOG_FLOOR))

    @torch.no_grad()
    def decode(
        self, codes: torch.Tensor, frame_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [B, K, F], frame_lengths [B] -> (wav [B, F * 320] 16 kHz, lengths = frame_lengths * 320).

        log-mel (sum of centroids) -> mel power -> linear power via the pseudo-inverse of the
        mel filter bank (clamped at 0) -> magnitude -> Griffin-Lim. Samples beyond each item's
        length are zero. With a vocoder configured (config key `vocoder`) it runs instead.
        """
        if self.vocoder is not None:
            return super().decode(codes, frame_lengths)
        out_device = codes.device
        frame_lengths = torch.as_tensor(frame_lengths).long().cpu()
        log_mel = self.reconstruct_log_mel(codes, frame_lengths)
        power = (log_mel.exp() @ self.inverse_bank).clamp(min=0.0)  # [B, F, 513]
        length = codes.shape[-1] * HOP_LENGTH
        wav = griffin_lim(
            power.sqrt().transpose(1, 2), length, MEL_N_FFT, HOP_LENGTH, self.griffin_lim_iters
        )
        lengths = frame_lengths * HOP_LENGTH
        sample = torch.arange(length, device=wav.device)[None, :]
        wav = wav.masked_fill(sample >= lengths.to(wav.device)[:, None], 0.0)
        return wav.to(out_device), lengths
