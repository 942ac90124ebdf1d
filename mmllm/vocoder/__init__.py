"""Training token vocoders (the model itself lives in `mmllm.tokenizers.vocoder`, where
decoding needs it): training data, losses, optional discriminators, the training loop.
"""
