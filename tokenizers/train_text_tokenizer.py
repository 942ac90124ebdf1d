"""Train the small SentencePiece text tokenizer on a SynthDASB corpus's transcripts.

    python tokenizers/train_text_tokenizer.py --data data/synthdasb --out runs/tokenizers/text \
        [--vocab-size 1024] [--model-type unigram|bpe] [--seed S] [--tasks asr,tts,...] \
        [--columns text,label,speaker]

Uses every non-empty train-split value of the columns (transcripts, labels, speaker names:
everything a prompted model reads or writes as text) of the tasks. Writes a Hugging Face tokenizer
(`AutoTokenizer.from_pretrained(OUT)` loads it offline; <unk> <s> </s> <pad> = ids 0-3, byte
fallback on), the raw `spm.model` and `text_tokenizer_card.json`. Logic:
`mmllm.data.text_tokenizer.train_text_tokenizer`.
"""

import sys

from mmllm.cli.tokens import text_tokenizer as main

if __name__ == "__main__":
    sys.exit(main())
