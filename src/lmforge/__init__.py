"""lmforge: raw text to a trained, evaluated, compressed and served language model."""

__version__ = "0.1.0"
