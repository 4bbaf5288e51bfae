"""Tokenizers, token shards, and the loader the trainer reads batches from.

train.py    train a byte-level BPE / char tokenizer, save HF-compatible files
engine.py   fast encoders (tiktoken / numpy) proven identical to the HF tokenizer
encode.py   the tokenize stage: parquet splits -> {split}.bin/.idx + meta.json
format.py   the on-disk token format both sides agree on
dataset.py  TokenDataset: a validated, memory-mapped split
loader.py   TokenLoader: random or packed windows, mixtures, exact resume, prefetch
"""
