"""napari-cdd-dehaze: unpaired image restoration (CDD-GAN) as a napari plugin and a GUI-free library.

The names users need are importable from here; each loads its module on first use, so importing the package
stays cheap (napari's plugin discovery imports it):

* :func:`load_model` (a built-in name or a trained model) and :func:`restore_array` with :class:`RestoreOptions`;
* :class:`Trainer`, :class:`TrainConfig` and :func:`preset` to train or finetune.

The subpackages show the layers: ``io`` (files), ``imaging`` (synthesis, metrics, devices), ``gan`` (networks,
methods, training), ``restore`` (the engine and classical methods); ``widgets`` and ``cli`` are the shells. No
module outside ``widgets`` imports napari or Qt.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "models", "BUILTIN_MODELS": "models",
    "restore_array": "restore", "RestoreOptions": "restore", "Cancelled": "restore",
    "Trainer": "gan.trainer", "TrainConfig": "gan.config", "preset": "gan.config",
    "load_restorer": "gan.checkpoint", "CheckpointError": "gan.checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
