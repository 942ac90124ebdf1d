"""Public corpora (LibriSpeech, Speech Commands, FSC, SLURP, VoxCeleb1, IEMOCAP, VoiceBank-
DEMAND, Libri2Mix, LJSpeech) converted to the one corpus schema (`mmllm.corpus.schema`).
"""
