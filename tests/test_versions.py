"""Each step module's source is pinned beside its ``VERSION`` (tests/versions.json): changing what a step computes
without bumping ``VERSION`` would let old checkpoints be reused with stale rows, so it fails here.

A pin covers the module and the helpers it imports (transitively, within its stage package and
``gristmill.common``, stopping at other versioned modules, which carry their own pins) except pure infrastructure
(``_INFRA``: the step contract, errors, sqlite store, model identity, request cache) that does not shape rows.
The hash is over ``ast.unparse`` of each file with docstrings removed, so comments, docstrings and formatting
never need a bump.

After bumping a VERSION (or when a helper change needs none, for a reason you can state), record the new pins:

    .venv/bin/python -m tests.test_versions --update

``--update`` refuses to re-pin a module whose code changed while its VERSION did not, unless ``--force`` is given.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "tests" / "versions.json"
# Stage folders sit at the root but install under gristmill.<name> (pyproject's package-dir).
_PACKAGES = {"gristmill.curation": ROOT / "curation", "gristmill.synth": ROOT / "synth",
             "gristmill.audit": ROOT / "audit", "gristmill.train": ROOT / "train",
             "gristmill.common": ROOT / "gristmill" / "common", "gristmill": ROOT / "gristmill"}
_VERSIONED = [*sorted((ROOT / "curation").glob("*.py")), *sorted((ROOT / "synth").rglob("*.py")),
              *sorted((ROOT / "audit").glob("*.py")), *sorted((ROOT / "train").glob("*.py")),
              ROOT / "gristmill" / "ingest.py"]
_INFRA = {"gristmill/common/contract.py", "gristmill/common/errors.py", "gristmill/common/store.py",
          "gristmill/common/identity.py", "gristmill/common/__init__.py", "synth/cache.py"}
_VERSION_RE = re.compile(r'^VERSION\s*=\s*"([^"]+)"', re.M)


def _file_of(module: str) -> Path | None:
    for prefix in sorted(_PACKAGES, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            rest = module[len(prefix) + 1:].split(".") if module != prefix else []
            base = _PACKAGES[prefix].joinpath(*rest)
            for cand in (base.with_suffix(".py"), base / "__init__.py"):
                if cand.is_file():
                    return cand
            return None
    return None


def _imports(path: Path) -> set[Path]:
    """Files of the gristmill modules ``path`` imports (``from gristmill.x import y`` may name a module y)."""
    out: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for name in names:
            if name.startswith("gristmill") and (found := _file_of(name)) is not None:
                out.add(found)
    return out


def _version(path: Path) -> str | None:
    found = _VERSION_RE.search(path.read_text())
    return found.group(1) if found else None


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _closure(module: Path) -> list[Path]:
    seen, todo = {module}, [module]
    while todo:
        for dep in _imports(todo.pop()):
            if dep in seen or _rel(dep) in _INFRA or dep.name == "__init__.py" or _version(dep) is not None:
                continue
            if dep.parent == ROOT / "gristmill" and dep.name != "mappings.py":
                continue  # the orchestrator: only ingest's mappings shape a step's rows
            seen.add(dep)
            todo.append(dep)
    return sorted(seen, key=_rel)


def code_hash(path: Path) -> str:
    """sha256 of the file's code without docstrings, comments or formatting (``ast.unparse``)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()


def current() -> dict[str, dict[str, object]]:
    pins = {}
    for module in _VERSIONED:
        version = _version(module)
        if version is None:
            continue
        files = _closure(module)
        h = hashlib.sha256("".join(f"{_rel(f)}:{code_hash(f)}\n" for f in files).encode()).hexdigest()
        pins[_rel(module)] = {"version": version, "sha256": h, "files": [_rel(f) for f in files]}
    return pins


def problems(pinned: dict[str, dict[str, object]], now: dict[str, dict[str, object]]) -> tuple[list[str], list[str]]:
    """(modules whose code changed without a VERSION bump, modules whose pin is merely out of date)."""
    stale, outdated = [], []
    for name, pin in now.items():
        old = pinned.get(name)
        if old is None or old["version"] != pin["version"] or old["files"] != pin["files"]:
            if old is None or old["version"] != pin["version"] or old["sha256"] != pin["sha256"]:
                outdated.append(name)
            continue
        if old["sha256"] != pin["sha256"]:
            stale.append(name)
    outdated += [name for name in pinned if name not in now]
    return stale, outdated


def test_every_step_module_changed_only_with_a_version_bump() -> None:
    stale, outdated = problems(json.loads(PINS.read_text()), current())
    assert not stale, "\n".join(
        f"bump VERSION of {name} (its code or a helper it imports changed: {', '.join(current()[name]['files'])}), "
        "then run `.venv/bin/python -m tests.test_versions --update`" for name in stale)
    assert not outdated, (f"version pins out of date for {outdated}: run "
                          "`.venv/bin/python -m tests.test_versions --update` and commit tests/versions.json")


def test_a_code_change_without_a_bump_is_caught(tmp_path: Path) -> None:
    now = current()
    name = "curation/filters.py"
    changed = {**now, name: {**now[name], "sha256": "0" * 64}}
    stale, outdated = problems(changed, now)
    assert stale == [name] and outdated == []
    bumped = {**now, name: {**now[name], "version": "0"}}
    assert problems(bumped, now) == ([], [name])


def test_code_hash_ignores_comments_docstrings_and_formatting(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""Doc."""\ndef f(x):\n    """Doc."""\n    return x + 1  # why\n')
    b.write_text("def f(x):\n    return (x+1)\n")
    c.write_text("def f(x):\n    return x + 2\n")
    assert code_hash(a) == code_hash(b) != code_hash(c)


def _update(force: bool) -> int:
    pinned = json.loads(PINS.read_text()) if PINS.exists() else {}
    now = current()
    stale, _ = problems(pinned, now)
    if stale and not force:
        print("code changed without a VERSION bump (bump it, or pass --force if the output cannot change):\n  "
              + "\n  ".join(stale), file=sys.stderr)
        return 1
    PINS.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    print(f"pinned {len(now)} modules in {_rel(PINS)}")
    return 0


if __name__ == "__main__":
    if "--update" not in sys.argv:
        print(__doc__)
        sys.exit(2)
    sys.exit(_update("--force" in sys.argv))
