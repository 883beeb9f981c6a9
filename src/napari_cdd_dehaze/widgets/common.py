"""Small helpers shared by the widgets."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari


def image_layer_choices(viewer: napari.viewer.Viewer) -> list[tuple[str, object]]:
    """(name, layer) for every Image layer, top of the layer list first."""
    from napari.layers import Image

    return [(layer.name, layer) for layer in reversed(viewer.layers) if isinstance(layer, Image)]


def run_label(run_dir: Path) -> str:
    return f"trained here: {run_dir.name}"


def notify_error(message: str) -> None:
    """A napari notification (not a traceback): the user reads what went wrong and the viewer stays usable."""
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):  # NaN before the first step
        return "–"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def make_worker(func, *args, error_prefix: str):
    """A thread worker for ``func(*args)`` (a function or generator) whose errors and warnings become
    notifications with a plain message — napari's own workers would attach the traceback."""
    import logging

    from napari.utils.notifications import show_warning
    from superqt.utils import create_worker

    worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)

    def report(exc: BaseException) -> None:
        logging.getLogger(__name__).debug("%s", error_prefix, exc_info=exc)
        notify_error(f"{error_prefix}: {exc}")

    worker.errored.connect(report)
    worker.warned.connect(lambda warning: show_warning(str(warning[0])))
    return worker
