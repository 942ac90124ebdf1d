"""The main job: interleaved text + audio pretraining of any Hugging Face causal LM.

    accelerate launch train/pretrain.py                        # the embedded default
    accelerate launch --config_file configs/accelerate/zero3.yaml train/pretrain.py \
        --config configs/pretrain/X.yaml train.steps=1000
    torchrun --nproc_per_node 2 train/pretrain.py train.deepspeed=null   # DDP on CPU

With no arguments it runs the embedded default offline on a CPU (configs/pretrain/default.yaml):
SynthDASB `small` with GRID's 51-word sentences is built (data/synthdasb-small-grid), the
CMVN delta mfcc-kmeans units are fitted, every row's audio is tokenized once
(data/tokens/mfcc-kmeans-<hash>) and a token vocoder is trained for the audio answers, each
step cached on disk; then a 4M-parameter Llama with a SentencePiece text vocabulary is trained
from scratch under DeepSpeed ZeRO-2, and the job ends printing prompt commands to try.

The job itself is `mmllm.pretrain.loop` (also `mmllm pretrain`); this script only launches it.
"""

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed

from mmllm.pretrain.loop import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
