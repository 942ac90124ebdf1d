"""Fit the k-means centroids of a k-means tokenizer on a SynthDASB corpus.

    python tokenizers/fit_kmeans.py --tokenizer configs/tokenizers/mfcc-kmeans.yaml \
        --data data/synthdasb --out runs/tokenizers/mfcc-kmeans [--max-frames N] [--seed S] \
        [codebook_size=100 ...]

Writes OUT/centroids.safetensors, OUT/card.json and OUT/config.yaml: the resolved tokenizer
config, with `centroids: OUT`, loadable as is. `--out` defaults to the config's `centroids`.
mfcc-kmeans and mel-rvq are fitted by mmllm.tokenizers.backends.offline; the SSL k-means
tokenizers (hubert-, wavlm-, wav2vec2-kmeans) by mmllm.tokenizers.backends.ssl.
"""

import sys

from mmllm.cli.tokens import fit as main

if __name__ == "__main__":
    sys.exit(main())
