"""The main job: interleaved text + audio pretraining (step 3 makes this real).

    accelerate launch train/pretrain.py [--config configs/pretrain/X.yaml] [KEY=VALUE ...]

Today it prepares what exists of the embedded default (the SynthDASB `small` corpus,
cached under data/) and then says what is still missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmllm.data.synth import SynthConfig, build

DEFAULT_DATA = Path("data/synthdasb-small")


def main() -> int:
    build(SynthConfig.from_name("small"), DEFAULT_DATA)
    print(
        "train/pretrain.py: the corpus is ready, but the audio tokenizers (step 2) and the "
        "trainer (step 3) are not implemented yet; nothing was trained.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
