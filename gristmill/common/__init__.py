"""The shared leaf every stage may import: the data contract and step result, user errors, text helpers, file
readers, the sqlite store, lexicon matching and embedding params.

Nothing here imports the orchestrator (``gristmill.runner``, ``gristmill.steps``, ...) or a stage package; the
import-linter contract in ``.importlinter`` enforces it, so code that two stages need lives here exactly once.
"""
