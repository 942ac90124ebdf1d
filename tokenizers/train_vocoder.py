"""Train a token vocoder (codes -> waveform) for a tokenizer without a decoder.

    python tokenizers/train_vocoder.py --config configs/vocoder/mfcc-kmeans.yaml \
        --tokenizer configs/tokenizers/mfcc-kmeans.yaml --data data/synthdasb-small \
        --cache data/tokens/mfcc-kmeans --out runs/vocoders/mfcc-kmeans [steps=3000 ...]

Trains on random aligned segments of (cached codes, audio) of the corpus's train split
(the tasks in the config; with discriminators when it has an `adversarial` section, e.g.
configs/vocoder/mfcc-kmeans-gan.yaml or the override adversarial={}), checkpoints to
OUT/checkpoints every `checkpoint_every` steps and exports OUT/vocoder.safetensors +
OUT/vocoder.json. Killed, it resumes from the last checkpoint when run again with the same
arguments. Also runs under `accelerate launch --num_processes 1` (GPUs). Decode with it by
setting `vocoder: OUT` in the tokenizer config. Logic: mmllm.vocoder (+ mmllm.vocoder.gan).
"""

import sys

from mmllm.cli.train import vocoder as main

if __name__ == "__main__":
    sys.exit(main())
