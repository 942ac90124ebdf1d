"""Evaluation and prompting: batched constrained generation, the DASB tasks as prompts,
metrics, the ASR scorer of dWER, the comparison report and the prompting CLI.
"""
