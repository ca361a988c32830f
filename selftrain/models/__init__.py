"""Base models, LoRA adapters, prompts and generation. Never touches the database."""
