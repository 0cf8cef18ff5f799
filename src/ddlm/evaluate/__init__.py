"""Evaluation: likelihood bounds and domain metrics."""
