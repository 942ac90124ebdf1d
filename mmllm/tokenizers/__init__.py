"""Audio tokenizers: one interface (`AudioTokenizer`), a registry, and the backends.

Not to be confused with the top-level `tokenizers/` folder, which holds scripts only.
"""

from mmllm.tokenizers.base import (
    PAD_CODE,
    TOKENIZERS,
    AudioTokenizer,
    TokenizerConfig,
    register_tokenizer,
)
from mmllm.tokenizers.registry import build_tokenizer

__all__ = [
    "PAD_CODE",
    "TOKENIZERS",
    "AudioTokenizer",
    "TokenizerConfig",
    "build_tokenizer",
    "register_tokenizer",
]
