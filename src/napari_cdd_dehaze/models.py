"""TEMPORARY shim until the eval branch lands (replaced by its models.py)."""
from __future__ import annotations

from pathlib import Path

from .checkpoint import CheckpointError, load_restorer

BUILTIN_MODELS: dict[str, str] = {}


def load_model(spec: str | Path):
    if str(spec) == "default":
        raise CheckpointError("no default model is bundled yet")
    return load_restorer(spec)
