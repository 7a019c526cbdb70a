"""Resumable training checkpoints: adapter weights, optimizer, scheduler, RNG states, data position, curve.

A checkpoint is written into a temporary folder beside its final name and renamed into place (``os.replace`` of
a folder is atomic on POSIX), so a kill at any moment leaves either the previous checkpoint or the new one, never
a half-written one. Only the newest checkpoint is kept.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

_STATE = "trainer_state.json"


def save_checkpoint(root: Path, step: int, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> Path:
    """Write ``root/step-NNNNNN`` atomically and remove older checkpoints; ``state`` must be JSON-serialisable."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    adapter = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(adapter, str(tmp / "adapter.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    (tmp / "rng.pkl").write_bytes(pickle.dumps(rng))
    (tmp / _STATE).write_text(json.dumps({**state, "step": step}))
    for f in tmp.iterdir():  # the data must be on disk before the rename makes the folder visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final = root / f"step-{step:06d}"
    os.replace(tmp, final)
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(root: Path | None) -> Path | None:
    if root is None or not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / _STATE).is_file())
    return done[-1] if done else None


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the saved state (step, data position, curve...)."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter.safetensors"), device=str(next(
        model.parameters()).device)))
    optim = torch.load(path / "optim.pt", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    rng = pickle.loads((path / "rng.pkl").read_bytes())
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / _STATE).read_text())
