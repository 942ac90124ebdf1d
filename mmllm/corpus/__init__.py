"""The corpus schema every task row follows, the label sets shared across corpora, and
the reader of a corpus directory. Below the tokenizers (fitting reads corpora); never
imports the synthesiser.
"""
