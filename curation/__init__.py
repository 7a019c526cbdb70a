"""Curation stage: pure functions over polars frames.

Every public step takes ``(frame, params)`` and returns ``(kept, dropped, stats)``; ``dropped`` carries a
``reason`` column so that no row disappears without one.
"""
