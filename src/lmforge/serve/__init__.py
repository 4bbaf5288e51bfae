"""Serving: the inference engine and the OpenAI-compatible server (see docs/serving.md)."""
