"""User-facing errors: bad input, a bad recipe, a missing file, a failed gate.

The CLI prints these as one line (exit 2, or 3 for a gate) because their message already says where the problem
is and how to fix it. Anything else raised during a run is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave us; the message names the file, line or recipe key and the fix."""


class InputError(UserError, ValueError):
    """Bad input data or a bad parameter value (also a ``ValueError`` for callers that catch those)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the recipe or a parameter names does not exist."""


class GateFailed(UserError):
    """The audit gate stopped the run before training."""

    def __init__(self, step: str, failures: list[str]) -> None:
        super().__init__(f"audit gate failed at {step}: " + "; ".join(failures))
        self.step = step
        self.failures = failures
