"""extract_corpus with the fake tokenizer, for launching under accelerate / torchrun in tests."""

import sys

import fake_tokenizer  # noqa: F401  (registers test-energy)

from mmllm.data.cache import extract_corpus
from mmllm.tokenizers.base import TokenizerConfig

if __name__ == "__main__":
    data, out, tasks = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    extract_corpus(
        TokenizerConfig(name="test-energy"),
        data,
        out,
        tasks=tasks,
        rows_per_part=4,
        max_batch_seconds=4,
    )
