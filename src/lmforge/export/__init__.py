"""The export stage: a model directory that transformers, vLLM and lm-eval load as it is."""
