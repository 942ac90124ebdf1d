"""Run the DASB tasks as prompts to a trained checkpoint and score them.

    python eval/dasb.py --checkpoint runs/pretrain/default/final \
        [--tasks asr,ks,ic,er,sid,sv,se,ss,tts] [--split test] [--limit N] [--out DIR] \
        [--asr ASR] [--vocoder DIR] [--batch-size 32] [--max-new-tokens 96]

Uses the checkpoint's own corpus and token caches (from its mmllm_pretrain.yaml). Writes
DIR/<task>.json, DIR/<task>.jsonl (every generation) and DIR/dasb.json; DIR defaults to the
run directory's `eval/`. dWER of TTS / SE / SS needs --asr: an mmllm checkpoint directory
trained on ASR, or a Whisper hub id / directory (mmllm.eval.asr_scorer); the report names it.
Same as `mmllm eval` (mmllm.cli.evaluate).
"""

import sys

from mmllm.cli.evaluate import dasb as main

if __name__ == "__main__":
    sys.exit(main())
