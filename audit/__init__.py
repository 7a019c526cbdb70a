"""Audit stage: demographic detection with the project's own lexicons, representation stats, fairlearn parity,
and a gate that stops a run before training."""
