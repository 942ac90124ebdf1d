"""Importing this package registers every backend with `mmllm.tokenizers.base.TOKENIZERS`.

Backends that need optional packages import them lazily, inside the constructor, so that
this import never fails; building such a backend without its package gives a clear error.
"""

from mmllm.tokenizers.backends import (  # noqa: F401
    compression,
    features,
    offline,
    speechtokenizer,
    ssl,
)
