"""gristmill: one recipe from raw data to a curated, audited dataset and a QLoRA adapter."""

__version__ = "0.1.0"
