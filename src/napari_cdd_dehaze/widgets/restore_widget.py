"""The Restore widget: pick an image layer and a model, restore it in a worker thread, get a new layer."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton, SpinBox
from qtpy.QtCore import QTimer

from napari_cdd_dehaze.imaging.devices import available_devices

from .common import image_layer_choices, make_worker, notify_error, notify_info, run_label
from .export_row import ExportRow
from .settings import models_in_folder, remember, reset_settings, setting
from .trained_models import TRAINED_MODELS

if TYPE_CHECKING:
    import napari

CHECKPOINT_FILE = "checkpoint file…"
LAYER, FOLDER = "image layer", "folder of files"


BUNDLED_CHOICES = (("bundled default", "default"), ("bundled derainer (rain)", "derain"))


def lazy(layer) -> bool:
    """Whether a layer's (full-resolution) data is not in memory: a dask or zarr array, read plane by plane."""
    if layer is None:
        return False
    return not isinstance(layer.data[0] if layer.multiscale else layer.data, np.ndarray)


def multiband(layer) -> bool:
    """Whether a layer is a multiband scene (bands first, more than three of them): the band picker applies."""
    if layer is None or layer.rgb:
        return False
    shape = (layer.data[0] if layer.multiscale else layer.data).shape
    return len(shape) == 3 and 3 < shape[0] <= 64 and shape[0] < min(shape[1:])


class RestoreWidget(Container):
    """Image layer + model (bundled default, classical, trained here, or a file) + device + tile → new layer; or a
    folder of image files → restored files under an output folder (:mod:`napari_cdd_dehaze.restore.files`)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.source = ComboBox(label="restore", choices=[LAYER, FOLDER], value=LAYER)
        self.image = ComboBox(label="image", choices=lambda _: image_layer_choices(self.viewer))
        self.in_folder = FileEdit(label="folder", mode="d", visible=False,
                                  tooltip="images in it and its subfolders (PNG, JPEG, TIFF)")
        self.out_folder = FileEdit(label="output folder", mode="d", visible=False,
                                   tooltip="restored files go here under the same relative paths and names")
        self.overwrite = CheckBox(text="restore again files whose output exists", value=False, visible=False)
        self.bands = LineEdit(label="bands", value="", visible=False,
                              tooltip="a multiband layer (bands first, e.g. 6 × Y × X): the bands the model sees as "
                                      "red, green, blue, counted from 1 (e.g. 4,3,2); the others are copied "
                                      "unchanged. Empty: every band restored alone as grey.")
        self.zarr_out = FileEdit(label="save to zarr", mode="w", value="", visible=False,
                                 tooltip="a layer read lazily (dask, zarr): the restored stack goes into this zarr "
                                         "store on disk, plane by plane (empty: a temporary file)")
        self.model = ComboBox(label="model", choices=self._model_choices)
        self.checkpoint = FileEdit(label="file", mode="r", filter="*.safetensors", visible=False)
        self.device = ComboBox(label="device", choices=available_devices(), value="auto")
        self.tile = SpinBox(label="tile (0 = auto)", value=0, min=0, max=16384, step=64,
                            tooltip="0: small images whole, large ones streamed layer by layer (exact, bounded "
                                    "memory). A size runs overlapping tiles that share one set of statistics. "
                                    "A dehazing model with a working scale (the bundled one) estimates the haze "
                                    "on a shrunk copy instead and ignores this.")
        self.precision = ComboBox(label="precision", choices=["auto", "fp32", "bf16", "fp16"], value="auto",
                                  tooltip="auto: bf16 for a dehazing model at its working scale on a device that "
                                          "computes bf16 natively, fp32 elsewhere")
        self.run_button = PushButton(text="Restore")
        self.reset_button = PushButton(text="Reset settings to defaults",
                                       tooltip="device, tile, precision, model folder and the remembered choices "
                                               "of both widgets (napari Preferences lists them too)")
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = Label(value="")
        self.export_row = ExportRow(self._chosen_model)
        self.extend([self.source, self.image, self.bands, self.zarr_out, self.in_folder, self.out_folder,
                     self.overwrite, self.model, self.checkpoint, self.device, self.tile, self.precision,
                     self.run_button, self.progress, self.status, self.export_row, self.reset_button])
        self.source.changed.connect(self._show_source)
        self.image.changed.connect(self._show_source)

        self.model.changed.connect(lambda: setattr(self.checkpoint, "visible", self.model.value == CHECKPOINT_FILE))
        self.model.changed.connect(self._describe_model)
        self.checkpoint.changed.connect(self._describe_model)
        self.run_button.changed.connect(self._run_or_cancel)
        self._apply_settings()
        self.device.changed.connect(lambda value: remember("defaults", "device", value))
        self.tile.changed.connect(lambda value: remember("defaults", "tile", value))
        self.precision.changed.connect(lambda value: remember("defaults", "precision", value))
        self.model.changed.connect(lambda value: value != CHECKPOINT_FILE and remember("last_used", "model", value))
        self.reset_button.changed.connect(self._reset_settings)
        # napari calls reset_choices() of a docked magicgui widget whenever layers change
        TRAINED_MODELS.subscribe(self._refresh_models)
        self.native.destroyed.connect(lambda *_: self._shutdown())

        self.worker = None
        self._cancel = False
        self._done: tuple[int, int] = (0, 1)   # written by the worker thread, read by the timer
        self._timer = QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)
        self._describe_model()
        self._show_source()

    # ------------------------------------------------------------------ settings
    def _apply_settings(self) -> None:
        """The stored defaults and last choices (napari's plugin settings; see :mod:`.settings`)."""
        device = setting("defaults", "device", "auto")
        self.device.value = device if device in self.device.choices else "auto"  # a GPU this machine lacks: auto
        self.tile.value = setting("defaults", "tile", 0)
        self.precision.value = setting("defaults", "precision", "auto")
        self.model.reset_choices()
        model = setting("last_used", "model", "default")
        if model in self.model.choices:
            self.model.value = model

    def _reset_settings(self) -> None:
        reset_settings()
        self._apply_settings()
        notify_info("Settings of napari-cdd-dehaze are back to their defaults.")

    # ------------------------------------------------------------------ choices
    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        from napari_cdd_dehaze.gan.checkpoint import bundled_model_available
        from napari_cdd_dehaze.models import BUILTIN_MODELS

        choices = [(label, name) for label, name in BUNDLED_CHOICES if bundled_model_available(name)]
        bundled = {name for _, name in BUNDLED_CHOICES}
        choices += [(label, name) for name, label in BUILTIN_MODELS.items() if name not in bundled | {"identity"}]
        trained = list(reversed(TRAINED_MODELS.runs()))
        choices += [(run_label(run), str(run)) for run in trained]
        in_folder = models_in_folder(setting("defaults", "model_folder", ""))
        choices += [(f"model folder: {path.name}", str(path)) for path in in_folder if path.resolve() not in trained]
        return choices + [(CHECKPOINT_FILE, CHECKPOINT_FILE)]

    def _show_source(self, _value=None) -> None:
        folder = self.source.value == FOLDER
        self.image.visible = not folder
        for widget in (self.in_folder, self.out_folder, self.overwrite):
            widget.visible = folder
        self.bands.visible = not folder and multiband(self.image.value)
        self.zarr_out.visible = not folder and lazy(self.image.value)

    def _chosen_model(self) -> str | None:
        """The model box's choice as a spec for :func:`~napari_cdd_dehaze.models.load_model` (None: no file yet)."""
        if self.model.value == CHECKPOINT_FILE:
            path = Path(self.checkpoint.value)
            return str(path) if path.is_file() else None
        return self.model.value

    def _describe_model(self, _value=None) -> None:
        """The chosen model's network, inference policy and provenance as the model box's tooltip."""
        from napari_cdd_dehaze.models import describe_model

        spec = self.checkpoint.value if self.model.value == CHECKPOINT_FILE else self.model.value
        try:
            self.model.tooltip = "\n".join(describe_model(spec)) if spec else ""
        except (ValueError, OSError):  # a path that is not a model yet: the Restore button says why
            self.model.tooltip = ""

    def _refresh_models(self) -> None:
        self.model.reset_choices()
        runs = TRAINED_MODELS.runs()
        if runs and str(runs[-1]) in self.model.choices:  # the model just trained is what the user wants next
            self.model.value = str(runs[-1])

    # ------------------------------------------------------------------ running
    def _run_or_cancel(self) -> None:
        if self.worker is not None:
            self._cancel = True
            self.status.value = "cancelling after this tile or band…"
            return
        spec = self.model.value
        if spec == CHECKPOINT_FILE:
            path = Path(self.checkpoint.value)
            if not path.is_file():
                notify_error("Choose a model file (.safetensors) to restore with.")
                return
            spec = str(path)
        if self.source.value == FOLDER:
            self._start_folder(spec)
            return
        layer = self.image.value
        if layer is None:
            notify_error("Choose an image layer to restore (open an image or load a sample first).")
            return
        self._start(layer, spec)

    def _start_folder(self, spec: str) -> None:
        from napari_cdd_dehaze.restore.engine import RestoreOptions
        from napari_cdd_dehaze.restore.files import plan_jobs, restore_files

        source, out = Path(self.in_folder.value), Path(self.out_folder.value)
        if not source.is_dir() or str(self.out_folder.value) in ("", "."):
            notify_error("Choose a folder of images and an output folder.")
            return
        jobs = plan_jobs([source], out)
        if not jobs:
            notify_error(f"No PNG, JPEG or TIFF files in {source}.")
            return
        options = RestoreOptions(device=self.device.value, tile=self.tile.value or None,
                                 precision=self.precision.value)

        def restore():
            from napari_cdd_dehaze.models import load_model

            return restore_files(load_model(spec), jobs, options, overwrite=self.overwrite.value,
                                 on_file=lambda done, total, job, status: self._record_progress(done, total),
                                 should_stop=lambda: self._cancel)

        self._cancel, self._done = False, (0, len(jobs))
        self.worker = make_worker(restore, error_prefix=f"Restoring {source} failed")
        self.worker.returned.connect(lambda report: self._finished_folder(out, report))
        self._begin(f"restoring {len(jobs)} file(s) from {source}…")

    def _finished_folder(self, out: Path, report) -> None:
        self._show_progress()
        self.status.value = f"{out}: {report.summary()}"
        if report.failed:
            names = ", ".join(path.name for path, _ in report.failed[:5])
            more = f" and {len(report.failed) - 5} more" if len(report.failed) > 5 else ""
            notify_error(f"{len(report.failed)} file(s) could not be restored: {names}{more}. "
                         + report.failed[0][1])

    def _start(self, layer, spec: str) -> None:
        from napari_cdd_dehaze.restore.engine import RestoreOptions
        from napari_cdd_dehaze.restore.files import parse_bands
        from napari_cdd_dehaze.restore.windows import Cancelled

        data = layer.data[0] if layer.multiscale else layer.data  # a multiscale layer: its full resolution
        channel_axis = -1 if layer.rgb else None  # napari's rgb flag says whether the last axis is colour
        try:
            bands = parse_bands(self.bands.value) if multiband(layer) else None
        except ValueError as exc:
            notify_error(str(exc))
            return
        if bands is not None:
            channel_axis = 0  # a multiband layer holds its bands first
        store = None
        if lazy(layer) and str(self.zarr_out.value) not in ("", "."):
            store = Path(self.zarr_out.value)
        options = RestoreOptions(device=self.device.value, tile=self.tile.value or None,
                                 precision=self.precision.value, progress=self._record_progress,
                                 should_stop=lambda: self._cancel)

        def restore():
            from napari_cdd_dehaze.models import load_model
            from napari_cdd_dehaze.restore.engine import restore_array
            from napari_cdd_dehaze.restore.lazy import restore_out_of_core

            model = load_model(spec)
            started = time.perf_counter()
            try:
                if isinstance(data, np.ndarray) or bands is not None:
                    restored = restore_array(model, np.asarray(data), options, channel_axis=channel_axis, bands=bands)
                else:  # dask, zarr, …: read plane by plane, into a zarr store or a memory-mapped temporary file
                    out = None if store is None else zarr_store(store, data, channel_axis == -1)
                    restored = restore_out_of_core(model, data, options, channel_axis=channel_axis, out=out)
                return restored, time.perf_counter() - started
            except Cancelled:
                return None

        self._cancel, self._done = False, (0, 1)
        self.worker = make_worker(restore, error_prefix=f"Restoring {layer.name} failed")
        self.worker.returned.connect(lambda result: self._finished(layer, result))
        self._begin(f"restoring {layer.name}…")

    def _begin(self, status: str) -> None:
        self.worker.finished.connect(self._idle)
        self.run_button.text = "Cancel"
        self.progress.visible, self.progress.value = True, 0
        self.status.value = status
        self._timer.start()
        self.worker.start()

    def _record_progress(self, done: int, total: int) -> None:
        self._done = (done, total)  # called in the worker thread; the GUI reads it on a timer

    def _show_progress(self) -> None:
        done, total = self._done
        self.progress.max, self.progress.value = max(total, 1), done

    def _finished(self, layer, result) -> None:
        if result is None:
            self.status.value = "cancelled"
            return
        restored, seconds = result
        name = f"{layer.name} (restored)"
        kwargs = {"scale": layer.scale, "translate": layer.translate, "rgb": layer.rgb, "name": name,
                      "contrast_limits": layer.contrast_limits}
        if not layer.rgb:
            kwargs["colormap"] = layer.colormap.name
        if name in self.viewer.layers:
            self.viewer.layers[name].data = restored
        else:
            self.viewer.add_image(restored, **kwargs)
        self._show_progress()
        self.status.value = f"{name}: {restored.shape} {restored.dtype} in {seconds:.1f} s"

    def _idle(self) -> None:
        self._timer.stop()
        self.worker = None
        self.run_button.text = "Restore"
        self.progress.visible = False

    def _shutdown(self) -> None:
        """The viewer is closing: stop the worker between tiles and stop listening."""
        TRAINED_MODELS.unsubscribe(self._refresh_models)
        self._cancel = True


def zarr_store(path: Path, like, rgb: bool):
    """A new zarr array at ``path`` shaped like ``like``, one chunk per plane (of colour when ``rgb``): where a lazy
    layer's result goes."""
    try:
        import zarr
    except ImportError as exc:
        raise ImportError('saving to zarr needs the zarr extra: pip install "napari-cdd-dehaze[zarr]"') from exc
    shape = tuple(like.shape)
    plane = 3 if rgb else 2
    chunks = (1,) * (len(shape) - plane) + shape[len(shape) - plane:]
    return zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=like.dtype, overwrite=True)
