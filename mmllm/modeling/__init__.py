"""The model side: any Hugging Face causal LM resized for the multimodal vocabulary
(`model`), per-document attention in packed blocks (`attention`), the continuous-input
projector and summed codebook inputs (`continuous`).
"""
