"""Machinery every trainer shares (the LLM pretrainer and the vocoder trainer): one
checkpoint/resume mechanism with its run check, one optimizer and LR schedule.
"""
