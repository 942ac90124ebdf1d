"""The random-weight Llama every model test builds (offline: from a config, no download).

    model = tiny_llama(vocab.size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)

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
