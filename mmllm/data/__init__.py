"""From corpus rows to training blocks: the token cache, the multimodal vocabulary, the
text tokenizer, codebook patterns, task templates, the mixture of sources and packing.
"""
