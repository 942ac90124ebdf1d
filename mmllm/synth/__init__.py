"""SynthDASB, the offline speech corpus of every DASB task rendered with eSpeak NG:
lexicon and grammar, task labels, voices, noise, and the builder (`mmllm synth`).
"""
