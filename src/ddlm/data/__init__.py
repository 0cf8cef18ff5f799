"""Data sources and tokenizers."""
