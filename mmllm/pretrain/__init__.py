"""The pretraining job: its config, the cached pipeline that prepares corpus, tokens,
vocabulary and model, the block schedule, the loss and the loop.
"""
