"""Code not yet wired into the stack; nothing in `mmllm` imports it (an import contract
checks). `multistream`: the delay-pattern model with K output heads, until step 11 wires
it into templates, trainer, generation and evaluation.
"""
