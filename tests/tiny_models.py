"""The random-weight models the tests build (offline: from a config, no download).

    model = tiny_llama(vocab.size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
    qwen = tiny_llama(vocab.size, family="qwen2")   # the same shape as a Qwen2ForCausalLM
    ssl = tiny_ssl_model("hubert")     # or "wavlm", "wav2vec2"; norm "group" for base-size
    codec = scramble(tiny_encodec())   # tiny_dac(), tiny_mimi(): codes that vary per frame
    FakeSpeechTokenizer                # the `speechtokenizer` package's model, same shapes

The MLP is twice the width; the seed is set right before construction, so the same
arguments give the same weights. Extra keyword arguments go to the family's config.
"""

from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(
    vocab_size: int,
    hidden_size: int = 16,
    num_layers: int = 1,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    seed: int = 0,
    family: str = "llama",
    **config,
) -> LlamaForCausalLM:
    import transformers

    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    torch.manual_seed(seed)
    return model_cls(
        config_cls(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads or num_heads,
            **config,
        )
    )


def tiny_ssl_model(kind: str, norm: str = "layer", num_layers: int = 3):
    """A random-init HubertModel / WavLMModel / Wav2Vec2Model: 3 transformer layers, hidden
    32, but the real conv feature encoder (hop 320, field 400)."""
    import transformers

    config_cls, model_cls = {
        "wavlm": ("WavLMConfig", "WavLMModel"),
        "hubert": ("HubertConfig", "HubertModel"),
        "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    }[kind]
    config = getattr(transformers, config_cls)(
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm=norm,  # "layer": large checkpoints; "group": base checkpoints
        do_stable_layer_norm=norm == "layer",
    )
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(config)


@torch.no_grad()
def scramble(model: nn.Module, seed: int) -> nn.Module:
    """Default PyTorch init for the convs and random codebooks, so codes vary frame to frame
    (the transformers init zeroes EnCodec's and Mimi's codebooks: every code would be 0)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and not hasattr(
            module, "parametrizations"
        ):  # plain convs (DAC's, Mimi's: std 0.02 init); EnCodec's weight-normed ones are kaiming
            module.reset_parameters()
        elif type(module).__name__ == "DacVectorQuantize":
            module.codebook.weight.normal_()  # DAC compares l2-normalised vectors: scale-free
    # EnCodec's and Mimi's codebooks start at zero (every code would be 0): draw codewords
    # with the latents' spread over time, or one codeword is nearest to every frame.
    # EnCodec ranks codewords by |x|^2 - 2 x.c + |c|^2, which cancels badly when the latents
    # sit far from the origin relative to their spread: rounding noise of 1e-7 (batch shapes
    # differ) then flips near-tied codes. Shift its latents to zero mean, as a trained
    # codec's roughly are, so only the distances' own rounding matters.
    kind = type(model).__name__
    if kind in ("EncodecModel", "MimiModel"):
        noise = 0.1 * torch.randn(1, 1, 48000)
        latents = model.encoder(noise) if kind == "EncodecModel" else model.encoder(noise).latents
        mean, spread = latents[0].mean(dim=1), latents[0].std(dim=1)  # [D] each
        if kind == "EncodecModel":
            model.encoder.layers[-1].conv.bias -= mean
            mean = torch.zeros_like(mean)
        name = "EncodecEuclideanCodebook" if kind == "EncodecModel" else "MimiEuclideanCodebook"
        books = [m for m in model.modules() if type(m).__name__ == name]
        for index, book in enumerate(books):
            centre = mean if index == 0 else torch.zeros_like(mean)  # later: residuals
            words = centre + spread * torch.randn(book.codebook_size, len(mean))
            if kind == "EncodecModel":
                book.embed.copy_(words)
            else:
                book.embed_sum.copy_(words)  # cluster_usage is 1: embed = embed_sum
                book._embed = None
    return model


def tiny_encodec():
    from transformers import EncodecConfig, EncodecModel

    return EncodecModel(EncodecConfig(hidden_size=16, num_filters=4, num_lstm_layers=1))


def tiny_dac(n_codebooks: int = 4):
    from transformers import DacConfig, DacModel

    config = DacConfig(
        encoder_hidden_size=4,
        downsampling_ratios=[2, 4, 5, 8],  # descript/dac_16khz's strides: hop 320
        decoder_hidden_size=16,
        n_codebooks=n_codebooks,
        codebook_dim=4,
        sampling_rate=16000,
    )
    return DacModel(config)


def tiny_mimi():
    from transformers import MimiConfig, MimiModel

    config = MimiConfig(
        hidden_size=16,
        num_filters=4,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=32,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        upsample_groups=16,
        num_quantizers=8,
    )
    return MimiModel(config)


class FakeSpeechTokenizer(nn.Module):
    """Stands in for the `speechtokenizer` package's model (same methods and shapes): two
    non-causal convs (biased, so padding is not zeros after the first), 8 x 1024 codes at 50 Hz."""

    n_q = 8
    sample_rate = 16000

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pre = nn.Conv1d(1, 4, kernel_size=161, padding=80)
        self.conv = nn.Conv1d(4, 8, kernel_size=960, stride=320, padding=320)

    @classmethod
    def load_from_checkpoint(cls, config_path, ckpt_path):
        assert Path(config_path).name == "config.json" and ckpt_path.endswith(".pt")
        return cls()

    def encode(self, x, n_q=None):  # [B, 1, T] -> [n_q, B, T / 320]
        hidden = self.conv(torch.tanh(self.pre(x)))
        codes = torch.remainder(torch.floor(hidden * 100), 1024).long()
        return codes.transpose(0, 1)[: n_q or self.n_q]

    def decode(self, codes):  # [n_q, B, F] -> [B, 1, F * 320]
        return (codes.float().mean(0) / 1024).repeat_interleave(320, dim=-1)[:, None]
