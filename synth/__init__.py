"""Synthetic data stage: generation engines, methods, output parsing and validation."""
