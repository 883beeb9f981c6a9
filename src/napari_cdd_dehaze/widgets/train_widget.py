"""The Train / finetune widget: two folders in, a model out, trained in a worker with live losses and preview."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton, SpinBox

from napari_cdd_dehaze.gan.checkpoint import BUNDLED_FOR_METHOD, BUNDLED_WEIGHTS, bundled_model_available
from napari_cdd_dehaze.gan.config import METHOD_PRESETS, preset
from napari_cdd_dehaze.imaging.devices import available_devices

from .common import (
    format_seconds,
    image_layer_choices,
    make_worker,
    notify_error,
    notify_info,
)
from .export_row import ExportRow
from .loss_plot import LossPlot
from .settings import remember, setting
from .trained_models import TRAINED_MODELS

if TYPE_CHECKING:
    import napari

PREVIEW_SIDE = 256        # the live preview restores a central crop of at most this many pixels a side
PREVIEW_LAYER = "training preview"
STOP_WAIT_S = 120         # on viewer close: how long to wait for the step in flight and the checkpoint


def preview_crop(data: np.ndarray, rgb: bool, current_step: tuple[int, ...], side: int = PREVIEW_SIDE
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """The displayed plane of a layer's data, cropped to its central ``side``² window; also the crop's (y, x)."""
    plane_dims = 3 if rgb else 2
    leading = data.shape[:data.ndim - plane_dims]
    steps = tuple(current_step[-(len(leading) + 2):-2]) if leading else ()
    index = tuple(min(max(int(s), 0), n - 1) for s, n in zip(steps, leading, strict=False))
    plane = np.asarray(data[index])
    h, w = plane.shape[:2]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.ascontiguousarray(plane[y0:y0 + side, x0:x0 + side]), (y0, x0)


class TrainWidget(Container):
    """Degraded + clean folders → a run folder with checkpoints, trained in a worker thread (Start/Stop, Resume)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.degraded = FileEdit(label="degraded images", mode="d", tooltip="folder of degraded (e.g. hazy) images")
        self.clean = FileEdit(label="clean images", mode="d", tooltip="folder of clean images of other scenes")
        runs = Path(setting("defaults", "model_folder", "") or Path.home() / "cdd-dehaze-runs")
        self.run_dir = FileEdit(label="run folder", mode="d", value=runs / time.strftime("run-%Y%m%d-%H%M%S"),
                                tooltip="checkpoints and restorer.safetensors are written here")
        self.method = ComboBox(label="method", choices=[("CDD-GAN (dehazing)", "cdd-gan"),
                                                        ("DCD-GAN (deraining)", "dcd-gan")], value="cdd-gan")
        self.start_from = ComboBox(label="start from", choices=self._start_choices,
                                   tooltip="finetune a model on your folders (minutes), or train one from scratch "
                                           "(hours)")
        self.init_file = FileEdit(label="file", mode="r", filter="*.safetensors", visible=False)
        self.preset = ComboBox(label="preset", choices=lambda _: sorted(METHOD_PRESETS[self.method.value]),
                               value=self._preset_for_start(),
                               tooltip="finetune: continue the start model for a time budget; "
                                       "cpu: width 32, 6 blocks, 128² crops; "
                                       "paper: width 64, 9 blocks, 256² crops (the lineage's values)")
        self.minutes = FloatSpinBox(label="minutes (0 = steps only)", min=0, max=100_000, step=1,
                                    tooltip="training stops after this much time (or at 'steps', if first)")
        self.steps = SpinBox(label="steps", min=1, max=10_000_000, step=100)
        self.crop = SpinBox(label="crop size", min=32, max=1024, step=16)
        self.lr = FloatSpinBox(label="learning rate", min=1e-5, max=1e-2, step=1e-5)
        self.device = ComboBox(label="device", choices=available_devices(), value="auto")
        self.preview_layer = ComboBox(label="preview on", choices=lambda _: image_layer_choices(self.viewer),
                                      nullable=True,
                                      tooltip="every few steps the current model restores a crop of this layer")
        self.preview_every = SpinBox(label="preview every", value=10, min=1, max=100_000, tooltip="steps")
        self.start_button = PushButton(text="Start")
        self.resume_button = PushButton(text="Resume", tooltip="continue the newest checkpoint in the run folder "
                                                               "up to 'steps' (the run's own settings are kept)")
        self.progress = ProgressBar(value=0, min=0, max=1)
        self.status = Label(value="")
        self.plot = LossPlot()
        self.extend([self.degraded, self.clean, self.run_dir, self.method, self.start_from, self.init_file,
                     self.preset, self.minutes, self.steps, self.crop, self.lr, self.device, self.preview_layer,
                     self.preview_every,
                     Container(widgets=[self.start_button, self.resume_button], layout="horizontal", labels=False),
                     self.progress, self.status])
        self.native.layout().addWidget(self.plot)
        self.export_row = ExportRow(self._trained_model, default_name="finetuned.onnx")
        self.append(self.export_row)

        self._apply_preset()
        self._apply_settings()
        self.preset.changed.connect(self._apply_preset)
        self.method.changed.connect(self._method_changed)
        self.start_from.changed.connect(self._start_changed)
        self.start_button.changed.connect(self._start_or_stop)
        self.resume_button.changed.connect(lambda: self._start(resume=True))
        # napari calls reset_choices() of a docked magicgui widget whenever layers change
        self.native.destroyed.connect(lambda *_: self._shutdown())

        self.worker = None
        self.trainer = None
        self._stop_requested = False
        self._closing = False
        self._plotted_run: Path | None = None
        self._preview_origin: tuple | None = None

    def _apply_settings(self) -> None:
        """The stored device and last training folders and minutes; and remember what the user picks next."""
        device = setting("defaults", "device", "auto")
        self.device.value = device if device in self.device.choices else "auto"
        for widget, name in ((self.degraded, "degraded"), (self.clean, "clean")):
            folder = setting("last_used", name, "")
            if folder and Path(folder).is_dir():
                widget.value = folder
            widget.changed.connect(lambda value, name=name: remember("last_used", name, str(value)))
        if self.preset.value == "finetune":
            self.minutes.value = setting("last_used", "minutes", self.minutes.value)
        self.minutes.changed.connect(lambda value: remember("last_used", "minutes", float(value)))
        self.device.changed.connect(lambda value: remember("defaults", "device", value))

    def _trained_model(self) -> str | None:
        """The run folder's model once a run has saved one (None before)."""
        from napari_cdd_dehaze.gan.checkpoint import RESTORER_FILE

        run_dir = Path(self.run_dir.value)
        return str(run_dir) if (run_dir / RESTORER_FILE).is_file() else None

    # ------------------------------------------------------------------ form
    def _start_choices(self, _widget=None) -> list[tuple[str, str]]:
        """Finetuning the method's bundled model comes first (what a user with one small folder wants): the
        dehazer for CDD-GAN, the derainer for DCD-GAN."""
        choices = []
        method = getattr(self, "method", None)
        bundled = BUNDLED_FOR_METHOD["cdd-gan" if method is None else method.value]
        if bundled_model_available(bundled):
            choices.append((f"bundled {'default' if bundled == 'default' else 'derainer'} (finetune)", bundled))
        return choices + [("model or checkpoint file… (finetune)", "file"), ("scratch", "scratch")]

    def _preset_for_start(self) -> str:
        return "cpu" if self.start_from.value == "scratch" else "finetune"

    def _method_changed(self) -> None:
        self.start_from.reset_choices()
        starts = [v for _, v in self._start_choices()]
        bundled = [v for v in starts if v in BUNDLED_WEIGHTS]
        # the method's bundled model when there is one; else scratch (a file is the user's choice only)
        self.start_from.value = bundled[0] if bundled else "scratch"
        self.preset.reset_choices()
        self._start_changed()

    def _start_changed(self) -> None:
        self.init_file.visible = self.start_from.value == "file"
        wanted = self._preset_for_start()
        if self.preset.value != wanted:
            self.preset.value = wanted  # applies it
        else:
            self._apply_preset()

    def _apply_preset(self) -> None:
        values = preset(self.preset.value, method=self.method.value)
        self.steps.value, self.crop.value, self.lr.value = values.steps, values.crop, values.lr
        self.minutes.value = values.minutes

    # ------------------------------------------------------------------ start / stop
    def _start_or_stop(self) -> None:
        if self.worker is not None:
            self.request_stop()
        else:
            self._start(resume=False)

    def request_stop(self) -> None:
        """Stop after the step in flight; the engine saves a checkpoint first."""
        self._stop_requested = True
        if self.trainer is not None:
            self.trainer.request_stop()
        self.status.value = "stopping after this step and saving a checkpoint…"

    def _start(self, resume: bool) -> None:
        if self.worker is not None:
            return
        degraded, clean, run_dir = Path(self.degraded.value), Path(self.clean.value), Path(self.run_dir.value)
        if not degraded.is_dir() or not clean.is_dir() or degraded == Path(".") or clean == Path("."):
            notify_error("Choose a folder of degraded images and a folder of clean images first.")
            return
        init = None
        if not resume and self.start_from.value in BUNDLED_WEIGHTS:
            init = BUNDLED_WEIGHTS[self.start_from.value]
        elif not resume and self.start_from.value == "file":
            init = Path(self.init_file.value)
            if not init.is_file():
                notify_error("Choose the model or checkpoint file (.safetensors) to start from.")
                return
        settings = {"method": self.method.value, "preset_name": self.preset.value, "steps": self.steps.value,
                    "minutes": self.minutes.value, "crop": self.crop.value, "lr": self.lr.value,
                    "device": self.device.value}
        preview_source = self._preview_source()
        self.worker = make_worker(_train_events, degraded, clean, run_dir, resume, init, settings, preview_source,
                                  self.preview_every.value, error_prefix="Training failed")
        self.worker.yielded.connect(self._on_yield)
        self.worker.finished.connect(self._idle)
        self._stop_requested = False
        if self._plotted_run != run_dir.resolve() or not resume:
            self.plot.clear()
        self._plotted_run = run_dir.resolve()
        self.start_button.text, self.resume_button.enabled = "Stop", False
        self.status.value = "reading the folders and building the networks…"
        self.worker.start()

    def _preview_source(self):
        layer = self.preview_layer.value
        if layer is None:
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        crop, (y0, x0) = preview_crop(data, layer.rgb, self.viewer.dims.current_step)
        scale, translate = np.asarray(layer.scale[-2:]), np.asarray(layer.translate[-2:])
        self._preview_origin = (scale, translate + np.array([y0, x0]) * scale, layer.rgb,
                                layer.contrast_limits, layer.colormap.name)
        return crop, layer.rgb

    # ------------------------------------------------------------------ events from the worker
    def _on_yield(self, item) -> None:
        if self._closing:
            return
        kind, payload = item
        if kind == "ready":
            self.trainer = payload
            if self._stop_requested:
                self.trainer.request_stop()
            c = self.trainer.config
            self._set_progress(self.trainer.step, c.steps, self.trainer.trained_s)
            self.status.value = (f"training {c.method} (width {c.width}, {c.blocks} blocks, crop {c.crop}) on "
                                 f"{self.trainer.device} from step {self.trainer.step}")
        elif kind == "preview":
            self._show_preview(payload)
        else:
            self._show_event(payload)

    def _set_progress(self, step: int, total: int, trained_s: float) -> None:
        """Steps done, or seconds of the time budget spent when the run has one (whichever ends it first)."""
        budget = round(self.trainer.config.minutes * 60) if self.trainer is not None else 0
        if budget > 0 and (step == 0 or trained_s / budget > step / total):
            self.progress.max, self.progress.value = budget, min(budget, round(trained_s))
        else:
            self.progress.max, self.progress.value = total, step

    def _show_event(self, event) -> None:
        self._set_progress(event.step, event.total, event.trained_s)
        if event.kind == "step":
            self.plot.add(event.step, event.losses)
            self.status.value = (f"step {event.step}/{event.total} · {event.steps_per_s:.2f} steps/s · "
                                 f"{format_seconds(event.trained_s)} trained · ETA {format_seconds(event.eta_s)}")
            return
        self.plot.flush()
        if event.kind == "checkpoint":
            self.status.value = f"step {event.step}/{event.total} · checkpoint saved"
            return
        run_dir = event.checkpoint.parent.parent
        TRAINED_MODELS.add(run_dir)
        verb = "stopped" if event.kind == "stopped" else "finished"
        self.status.value = f"{verb} at step {event.step}; model in {run_dir}"
        notify_info(f"Training {verb} at step {event.step}. The model ({run_dir.name}) is now in the Restore "
                    f"widget's model list; Resume continues it.")

    def _show_preview(self, restored: np.ndarray) -> None:
        scale, translate, rgb, limits, colormap = self._preview_origin
        if PREVIEW_LAYER in self.viewer.layers:
            self.viewer.layers[PREVIEW_LAYER].data = restored
        else:
            kwargs = {} if rgb else {"colormap": colormap}
            self.viewer.add_image(restored, name=PREVIEW_LAYER, scale=scale, translate=translate, rgb=rgb,
                                  contrast_limits=limits, **kwargs)

    def _idle(self) -> None:
        self.worker, self.trainer = None, None
        if self._closing:
            return
        self.start_button.text, self.resume_button.enabled = "Start", True

    def _shutdown(self) -> None:
        """The viewer is closing: stop after the step in flight, let the checkpoint be written, then return."""
        self._closing = True
        worker = getattr(self, "worker", None)  # None too when Python has already let go of the widget
        if worker is None:
            return
        self._stop_requested = True
        if self.trainer is not None:
            self.trainer.request_stop()
        deadline = time.monotonic() + STOP_WAIT_S
        while worker.is_running and time.monotonic() < deadline:
            time.sleep(0.05)


def _train_events(degraded: Path, clean: Path, run_dir: Path, resume: bool, init, settings: dict,
                  preview_source, preview_every: int):
    """Runs in the worker thread: builds the trainer, then yields ("ready", trainer), ("event", TrainEvent)
    for every engine event and ("preview", array) every ``preview_every`` steps."""
    from napari_cdd_dehaze.gan.trainer import Trainer, resume_config
    from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array

    if resume:
        config = resume_config(run_dir, steps=settings["steps"], minutes=settings["minutes"],
                               device=settings["device"])
    else:
        config = preset(settings["preset_name"], method=settings["method"], steps=settings["steps"],
                        minutes=settings["minutes"], crop=settings["crop"], lr=settings["lr"],
                        device=settings["device"])
    trainer = Trainer(config, degraded, clean, run_dir, resume=resume, init_from=init)
    if resume and trainer.step >= config.steps:
        raise ValueError(f"the run is already at step {trainer.step}; raise 'steps' above it to continue")
    if resume and trainer.out_of_time:
        raise ValueError(f"the run has used its {config.minutes:g} minutes; raise 'minutes' to continue")
    yield "ready", trainer

    def preview() -> np.ndarray:
        crop, rgb = preview_source
        restorer = copy.deepcopy(trainer.method.shipped_restorer())  # a snapshot: training goes on unaffected
        return restore_array(restorer, crop, RestoreOptions(device=trainer.device, tile=0),
                             channel_axis=-1 if rgb else None)

    if preview_source is not None:
        yield "preview", preview()
    for event in trainer.events():
        yield "event", event
        if preview_source is not None and event.kind == "step" and event.step % preview_every == 0:
            yield "preview", preview()
