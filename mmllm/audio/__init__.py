"""Audio: reading, resampling and writing waveforms (`io`), spectral features and DSP
(`features`). A leaf: imports nothing of mmllm but `fileio`.
"""
