"""`lmforge eval`: score a model on generation and classification tasks."""
