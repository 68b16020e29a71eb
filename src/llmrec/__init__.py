"""llmrec: recommendations made by language models, evaluated honestly."""

__version__ = "0.1.0"
