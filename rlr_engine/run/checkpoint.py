"""Atomic checkpoints (atomic_files.py): a kill mid-write leaves the previous checkpoint intact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlr_engine.control.run_dirs import find_checkpoint
from rlr_engine.core.atomic_files import atomic_file
from rlr_engine.core.errors import CheckpointError

FORMAT = "rlr-checkpoint-1"


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        torch.save(dict(payload, format=FORMAT), handle)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by save_atomic; any problem becomes a CheckpointError that says
    which file and why."""
    path = find_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, pickle error, wrong file type ...
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}); "
            f"it may be truncated or not an rlr checkpoint"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an rlr checkpoint (no '{FORMAT}' marker)")
    return payload


def load_model_state(model: torch.nn.Module, payload: dict[str, Any], source: str | Path) -> None:
    """Load a checkpoint's weights, reporting a mismatch (another model, an older layout) as a
    CheckpointError instead of PyTorch's multi-line RuntimeError."""
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else "")
        raise CheckpointError(
            f"checkpoint {source} does not fit the model its config describes: {detail[:300]}"
        ) from None
