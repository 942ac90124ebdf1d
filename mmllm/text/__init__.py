"""Text rules shared by every metric and corpus: the one transcript normaliser and
numbers spelled out.
"""
