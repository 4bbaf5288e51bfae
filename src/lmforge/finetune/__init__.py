"""Fine-tuning: conversations in, a fine-tuned model or a PEFT adapter out."""
