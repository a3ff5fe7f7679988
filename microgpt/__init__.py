"""microgpt: the complete algorithm of a GPT in one file of plain Python (microgpt/atomic.py),
and around it what a person needs to learn from it, use it and outgrow it."""

__version__ = "0.1.0"
