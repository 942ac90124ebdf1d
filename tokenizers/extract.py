"""Encode a corpus into a token cache, once: python tokenizers/extract.py --tokenizer CFG --data DIR --out DIR

    python tokenizers/extract.py --tokenizer configs/tokenizers/mfcc-kmeans.yaml \\
        --data data/synthdasb-small --out data/tokens/mfcc-kmeans [--tasks asr,ks] [KEY=VALUE ...]

Sharded under `accelerate launch --num_processes N tokenizers/extract.py ...` on GPUs, or
`torchrun --nproc_per_node N tokenizers/extract.py ...` on CPU; killed at any
moment and run again, it finishes with exactly the cache an uninterrupted run makes.
Rows with bad audio are reported by id, counted and skipped.
"""

import sys

from mmllm.cli.tokens import extract as main

if __name__ == "__main__":
    sys.exit(main())
