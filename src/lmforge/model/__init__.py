"""The model: config and presets, the Llama-style network, KV cache, HF conversion."""
