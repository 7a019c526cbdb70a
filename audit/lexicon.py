"""The audit's built-in lexicons (``audit/lexicons/*.json``, project-written data files).

Loading and matching live in ``gristmill.common.lexicon`` so that gap filling in synthesis matches exactly as the
audit counts; this module only knows where the built-in files are.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from gristmill.common.lexicon import Lexicon, load_lexicon


def builtin_lexicon_path() -> Path:
    """The built-in English lexicon file."""
    return Path(str(resources.files(__package__).joinpath("lexicons/en.json")))


def lexicon_or_builtin(path: str | None, key: str = "audit.lexicon") -> Lexicon:
    """The lexicon at ``path``, or the built-in English one."""
    return load_lexicon(path or builtin_lexicon_path(), key=key)
