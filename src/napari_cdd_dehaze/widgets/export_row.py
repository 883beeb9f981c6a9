"""The "export model" row of both widgets: a format, a file to write (a save dialog) and a button.

The export runs in a worker thread (tracing a model takes seconds); success and failure are notifications.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, PushButton

from .common import make_worker, notify_error, notify_info

FORMATS = [("ONNX (onnxruntime, QGIS Deepness)", "onnx"), ("bioimage.io package (.zip)", "bioimageio")]
SUFFIXES = {"onnx": ".onnx", "bioimageio": ".zip"}


def _export(spec: str, out: Path, file_format: str) -> Path:
    """Runs in the worker: the export, or an error with a one-line reason (a missing extra named)."""
    from napari_cdd_dehaze.export.onnx import export_model

    return export_model(spec, out, file_format=file_format)


class ExportRow(Container):
    """Export what ``model_spec()`` names (None: nothing to export yet, said in a notification)."""

    def __init__(self, model_spec: Callable[[], str | None], default_name: str = "restorer.onnx") -> None:
        super().__init__(labels=True)
        self.model_spec = model_spec
        self.file_format = ComboBox(label="export as", choices=FORMATS, value="onnx")
        self.path = FileEdit(label="export to", mode="w", filter="*.onnx *.zip", value=Path.home() / default_name)
        self.button = PushButton(text="Export model")
        self.extend([self.file_format, self.path, self.button])
        self.button.changed.connect(self.export)
        self.worker = None
        self.last_export: Path | None = None

    def export(self) -> None:
        if self.worker is not None:
            return
        spec = self.model_spec()
        if spec is None:
            notify_error("Nothing to export yet: train a model or choose one first.")
            return
        out = Path(self.path.value)
        suffix = SUFFIXES[self.file_format.value]
        if out.suffix.lower() != suffix:
            out = out.with_suffix(suffix)
        self.worker = make_worker(_export, str(spec), out, self.file_format.value, error_prefix="Export failed")
        self.worker.returned.connect(self._done)
        self.worker.finished.connect(self._idle)
        self.button.enabled = False
        self.worker.start()

    def _done(self, path: Path) -> None:
        self.last_export = path
        notify_info(f"Exported the model to {path} ({path.stat().st_size / 1e6:.1f} MB).")

    def _idle(self) -> None:
        self.worker = None
        self.button.enabled = True
