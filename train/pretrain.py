"""The main job: interleaved text + audio pretraining (step 3 makes the training real).

    accelerate launch train/pretrain.py [--config configs/pretrain/X.yaml] [KEY=VALUE ...]

Today it prepares everything the embedded default needs, each step cached on disk:
the SynthDASB `small` corpus (data/synthdasb-small), the offline `mfcc-kmeans` tokenizer
fitted on it (runs/tokenizers/mfcc-kmeans) and the token cache (data/tokens/mfcc-kmeans);
then it says what is still missing and exits non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmllm.config import load_config
from mmllm.data.cache import extract_corpus
from mmllm.data.synth import SynthConfig, build
from mmllm.tokenizers.backends.offline import fit_offline_from_config
from mmllm.tokenizers.base import TokenizerConfig

CORPUS = Path("data/synthdasb-small")
TOKENIZER_CONFIG = Path("configs/tokenizers/mfcc-kmeans.yaml")
TOKENS = Path("data/tokens/mfcc-kmeans")


def main() -> int:
    build(SynthConfig.from_name("small"), CORPUS)
    tokenizer = load_config(TokenizerConfig, TOKENIZER_CONFIG)
    if not (Path(tokenizer.centroids) / "centroids.safetensors").is_file():
        fit_offline_from_config(
            tokenizer, CORPUS, Path(tokenizer.centroids), max_frames=500_000, seed=0
        )
    extract_corpus(tokenizer, CORPUS, TOKENS)
    print(
        f"train/pretrain.py: corpus {CORPUS} and token cache {TOKENS} are ready, but the trainer "
        "(step 3) is not implemented yet; nothing was trained.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
