"""The random-weight models the tests build (offline: from a config, no download).

    model = tiny_llama(vocab.size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
    ssl = tiny_ssl_model("hubert")     # or "wavlm", "wav2vec2"; norm "group" for base-size

The MLP is twice the width; the seed is set right before construction, so the same
arguments give the same weights. Extra keyword arguments go to `LlamaConfig`.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(
    vocab_size: int,
    hidden_size: int = 16,
    num_layers: int = 1,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    seed: int = 0,
    **config,
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads or num_heads,
            **config,
        )
    )


def tiny_ssl_model(kind: str, norm: str = "layer"):
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
        num_hidden_layers=3,
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
