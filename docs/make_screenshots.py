"""Screenshots of both widgets in use, from a real napari viewer, for the README.

Run on a display or a virtual one:  xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py
It restores the hazy sample with ``--model`` (default: the dark channel prior, which needs no training), finetunes
the bundled model as the Train widget opens (finetune preset) for ``--steps`` steps on synthetic demo folders with
a live preview, and writes
docs/restore_widget.png and docs/train_widget.png.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication
from skimage.io import imsave

from napari_cdd_dehaze.imaging.synthesis import write_demo_folders

HERE = Path(__file__).resolve().parent


def wait(condition, timeout: float) -> None:
    app, deadline = QApplication.instance(), time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)
    if not condition():
        raise TimeoutError("the widget did not finish in time")


def settle(seconds: float = 1.0) -> None:
    app, end = QApplication.instance(), time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="dcp", help="model for the Restore screenshot (dcp, cap, default, a path)")
    parser.add_argument("--steps", type=int, default=40, help="training steps before the Train screenshot")
    args = parser.parse_args()

    viewer = napari.Viewer(title="napari-cdd-dehaze")
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-cdd-dehaze", "hazy_outdoor_scene")
    hazy = viewer.layers["hazy scene"]
    _, restore = viewer.window.add_plugin_dock_widget("napari-cdd-dehaze", "Restore")
    restore.image.value = hazy
    restore.model.value = args.model
    restore.run_button.changed.emit(True)
    wait(lambda: restore.worker is None, 600)
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # napari ≥ 0.9 / older
    grid.enabled = True
    viewer.reset_view()
    viewer.layers["clear (reference)"].visible = False
    settle()
    imsave(HERE / "restore_widget.png", viewer.screenshot(canvas_only=False, flash=False), check_contrast=False)

    grid.enabled = False
    viewer.reset_view()
    viewer.layers.remove(f"{hazy.name} (restored)")
    _, train = viewer.window.add_plugin_dock_widget("napari-cdd-dehaze", "Train / finetune")
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_demo_folders(Path(tmp) / "demo")
        train.degraded.value, train.clean.value = folders["degraded"], folders["clean"]
        train.run_dir.value = Path(tmp) / "run"
        train.preview_every.value = 5  # every other setting as the widget opens: finetune the bundled model
        train.preview_layer.value = hazy
        train.start_button.changed.emit(True)
        wait(lambda: train.trainer is not None and train.trainer.step >= args.steps, 1800)
        settle(2)
        imsave(HERE / "train_widget.png", viewer.screenshot(canvas_only=False, flash=False), check_contrast=False)
        train.request_stop()
        wait(lambda: train.worker is None, 300)
    viewer.close()
    print(f"wrote {HERE / 'restore_widget.png'} and {HERE / 'train_widget.png'}")


if __name__ == "__main__":
    main()
