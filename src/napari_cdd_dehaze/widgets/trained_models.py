"""State shared by the widgets of one napari viewer: the models trained in it.

The Train widget adds each run it saves; the Restore widget lists them at once. Plain Python, no Qt.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


class TrainedModels:
    """Run folders trained since napari started, newest last, with listeners called on every change."""

    def __init__(self) -> None:
        self._runs: list[Path] = []
        self._listeners: list[Callable[[], None]] = []

    def add(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir).resolve()
        if run_dir in self._runs:
            self._runs.remove(run_dir)
        self._runs.append(run_dir)
        for listener in list(self._listeners):
            listener()

    def runs(self) -> list[Path]:
        return list(self._runs)

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)


TRAINED_MODELS = TrainedModels()
