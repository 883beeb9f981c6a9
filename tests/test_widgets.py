"""The napari widgets in a real viewer (Xvfb through pytest-xvfb): restore, cancel, train/stop/resume, bad input."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    pytest.skip("no display: on a headless machine install Xvfb (see README) so pytest-xvfb can start one",
                allow_module_level=True)

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_cdd_dehaze.gan.checkpoint import latest_checkpoint, load_restorer, save_restorer  # noqa: E402
from napari_cdd_dehaze.gan.networks import GeneratorConfig, ResnetGenerator  # noqa: E402
from napari_cdd_dehaze.widgets.restore_widget import CHECKPOINT_FILE  # noqa: E402

PLUGIN = "napari-cdd-dehaze"


@pytest.fixture
def model_file(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_restorer(path, ResnetGenerator(GeneratorConfig(channels=3, width=8, blocks=2)), {"method": "test"})
    return path


@pytest.fixture
def notifications():
    """Every notification shown while the test runs (messages), newest last."""
    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def restore_with_file(widget, model_file, layer) -> None:
    widget.image.value = layer
    widget.model.value = CHECKPOINT_FILE
    widget.checkpoint.value = model_file
    widget.run_button.changed.emit(True)


def wait_idle(qtbot, widget, timeout_ms: int = 60_000) -> None:
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout_ms)


def test_manifest_registers_both_widgets_and_the_filter_menu(make_napari_viewer):
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    assert {w.display_name for w in manifest.contributions.widgets} == {"Restore", "Train / finetune"}
    filters = manifest.contributions.menus["napari/layers/filter"]
    assert any(item.command == f"{PLUGIN}.restore_widget" for item in filters)
    viewer = make_napari_viewer()
    assert type(dock(viewer, "Restore")).__name__ == "RestoreWidget"
    assert type(dock(viewer, "Train / finetune")).__name__ == "TrainWidget"


@pytest.mark.parametrize("kind", ["grey uint16", "rgb uint8", "stack uint8"])
def test_restore_makes_a_layer_like_the_input(make_napari_viewer, qtbot, model_file, kind):
    rng = np.random.default_rng(0)
    data, scale = {
        "grey uint16": (rng.integers(0, 4096, (40, 52), dtype=np.uint16), (2.0, 3.0)),
        "rgb uint8": (rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), (0.5, 0.5)),
        "stack uint8": (rng.integers(0, 256, (3, 36, 44), dtype=np.uint8), (4.0, 0.5, 0.5)),
    }[kind]
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, name="input", scale=scale, translate=(0,) * (data.ndim - (kind == "rgb uint8")))
    widget = dock(viewer, "Restore")
    restore_with_file(widget, model_file, layer)
    wait_idle(qtbot, widget)
    out = viewer.layers["input (restored)"]
    assert out.data.shape == data.shape and out.data.dtype == data.dtype
    assert np.allclose(out.scale, layer.scale) and out.rgb == layer.rgb
    assert not np.array_equal(out.data, data)  # the network ran
    assert "input (restored)" in widget.status.value


def test_the_model_box_says_what_the_chosen_model_is(make_napari_viewer, model_file):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Restore")
    widget.model.value = "default"
    assert "estimate_size: 128" in widget.model.tooltip and "step 2600" in widget.model.tooltip
    widget.model.value = CHECKPOINT_FILE
    widget.checkpoint.value = model_file
    assert "width 8, 2 residual blocks" in widget.model.tooltip and "method test" in widget.model.tooltip


def test_gui_stays_responsive_and_progress_counts_tiles(make_napari_viewer, qtbot, model_file):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(1).random((384, 384), dtype=np.float32), name="big")
    widget = dock(viewer, "Restore")
    widget.tile.value = 64
    ticks, maxima = [], []
    timer = QTimer()
    timer.timeout.connect(lambda: (ticks.append(time.monotonic()), maxima.append(widget.progress.max)))
    timer.start(20)
    started = time.monotonic()
    restore_with_file(widget, model_file, layer)
    wait_idle(qtbot, widget)
    elapsed = time.monotonic() - started
    timer.stop()
    # the event loop ran throughout: ticks every 20 ms kept coming while the worker computed
    assert len(ticks) >= 0.5 * elapsed / 0.02 and len(ticks) >= 5
    assert max(maxima) == 36  # 6 × 6 tiles of 64 px
    assert viewer.layers["big (restored)"].data.dtype == np.float32


def test_cancel_stops_between_tiles(make_napari_viewer, qtbot, model_file):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(2).random((3, 512, 512), dtype=np.float32), name="stack")
    widget = dock(viewer, "Restore")
    widget.tile.value = 64
    restore_with_file(widget, model_file, layer)
    qtbot.waitUntil(lambda: widget._done[0] >= 1, timeout=30_000)
    assert widget.run_button.text == "Cancel"
    widget.run_button.changed.emit(True)
    wait_idle(qtbot, widget)
    assert widget.status.value == "cancelled"
    assert "stack (restored)" not in viewer.layers
    assert widget.run_button.text == "Restore"


def test_train_stop_resume_preview_and_model_list(make_napari_viewer, qtbot, unpaired_folders, tmp_path):
    degraded, clean = unpaired_folders
    viewer = make_napari_viewer()
    target = viewer.add_image(np.random.default_rng(3).integers(0, 256, (80, 90, 3), dtype=np.uint8), name="hazy")
    restore = dock(viewer, "Restore")
    train = dock(viewer, "Train / finetune")
    run_dir = tmp_path / "run"
    train.degraded.value, train.clean.value, train.run_dir.value = degraded, clean, run_dir
    train.start_from.value = "scratch"  # the cpu preset, counted in steps
    assert train.preset.value == "cpu" and train.minutes.value == 0
    train.steps.value, train.crop.value, train.device.value = 200, 32, "cpu"
    train.preview_layer.value, train.preview_every.value = target, 2
    train.start_button.changed.emit(True)
    assert train.start_button.text == "Stop"
    qtbot.waitUntil(lambda: train.progress.value >= 4 or train.worker is None, timeout=300_000)
    assert train.worker is not None, train.status.value
    train.start_button.changed.emit(True)  # Stop
    wait_idle(qtbot, train, 120_000)
    stopped_at = train.progress.value
    assert 4 <= stopped_at < 200 and f"stopped at step {stopped_at}" in train.status.value
    assert latest_checkpoint(run_dir).name.endswith(f"{stopped_at:08d}") or str(stopped_at) in latest_checkpoint(
        run_dir).name
    assert load_restorer(run_dir).config.width == 32  # the cpu preset's network, loadable
    # the loss plot drew every step of every term, the preview sits over the crop it restored
    assert set(train.plot.lines) >= {"gan", "nce", "cycle", "identity", "critics", "nce vs generated negatives"}
    assert all(len(line.get_xdata()) == stopped_at for line in train.plot.lines.values())
    preview = viewer.layers["training preview"]
    assert preview.data.shape == (80, 90, 3) and preview.data.dtype == np.uint8
    # the model is offered in the Restore widget at once, and selected
    assert restore.model.value == str(run_dir.resolve())
    # Resume continues the step count to the new total
    train.steps.value = stopped_at + 3
    train.resume_button.changed.emit(True)
    wait_idle(qtbot, train, 120_000)
    assert f"finished at step {stopped_at + 3}" in train.status.value
    assert train.plot.steps[-1] == stopped_at + 3 and len(train.plot.steps) == stopped_at + 3


def test_finetuning_the_bundled_model_is_the_default_and_the_preview_updates(make_napari_viewer, qtbot,
                                                                             unpaired_folders, tmp_path):
    from napari_cdd_dehaze.gan.checkpoint import read_meta
    from napari_cdd_dehaze.gan.run_card import CARD_FILE

    degraded, clean = unpaired_folders
    viewer = make_napari_viewer()
    target = viewer.add_image(np.random.default_rng(5).integers(0, 256, (72, 84, 3), dtype=np.uint8), name="hazy")
    restore = dock(viewer, "Restore")
    train = dock(viewer, "Train / finetune")
    # what a user sees on opening the widget: finetune the bundled model for ten minutes
    assert train.start_from.value == "default" and train.preset.value == "finetune"
    assert train.minutes.value == 10 and train.lr.value == pytest.approx(2e-4)
    previews = []
    show = train._show_preview
    train._show_preview = lambda restored: (previews.append(np.array(restored)), show(restored))
    run_dir = tmp_path / "finetuned"
    train.degraded.value, train.clean.value, train.run_dir.value = degraded, clean, run_dir
    train.preview_layer.value, train.preview_every.value = target, 2
    train.steps.value, train.device.value = 4, "cpu"  # a few steps, every other setting as it opened
    train.start_button.changed.emit(True)
    wait_idle(qtbot, train, 300_000)
    assert "finished at step 4" in train.status.value, train.status.value
    meta = read_meta(latest_checkpoint(run_dir))
    assert meta["config"]["minutes"] == 10 and meta["config"]["decay_from"] == 1.0
    assert meta["start_model"].startswith("default") and meta["trained_s"] > 0
    assert load_restorer(run_dir).config.output == "dehaze"  # the bundled model's network, finetuned
    assert "default (the bundled dehazing model)" in (run_dir / CARD_FILE).read_text()
    # the start model's restoration, then steps 2 and 4: the layer shows each, and training changed it
    assert len(previews) == 3 and all(p.shape == (72, 84, 3) for p in previews)
    assert np.abs(previews[-1].astype(int) - previews[0].astype(int)).max() > 0
    np.testing.assert_array_equal(viewer.layers["training preview"].data, previews[-1])
    assert restore.model.value == str(run_dir.resolve())  # selected in Restore at the end


def test_bad_input_is_a_notification_and_the_viewer_stays_usable(make_napari_viewer, qtbot, tmp_path,
                                                                   notifications, unpaired_folders):
    viewer = make_napari_viewer()
    restore = dock(viewer, "Restore")
    train = dock(viewer, "Train / finetune")

    restore.run_button.changed.emit(True)  # no image layer at all
    assert restore.worker is None and "Choose an image layer" in str(notifications[-1].message)

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    layer = viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    restore_with_file(restore, corrupt, layer)
    wait_idle(qtbot, restore)
    assert "Restoring img failed" in str(notifications[-1].message) and "corrupt" in str(notifications[-1].message)

    empty = tmp_path / "empty"
    empty.mkdir()
    train.degraded.value, train.clean.value = empty, unpaired_folders[1]
    train.run_dir.value = tmp_path / "run"
    train.start_button.changed.emit(True)
    wait_idle(qtbot, train)
    assert "Training failed" in str(notifications[-1].message) and "empty" in str(notifications[-1].message)
    assert train.start_button.text == "Start"
    viewer.add_image(np.ones((8, 8)), name="still works")
    assert "still works" in viewer.layers and viewer.layers["still works"] in restore.image.choices


def test_closing_the_viewer_stops_training_with_a_checkpoint(make_napari_viewer, qtbot, unpaired_folders, tmp_path):
    degraded, clean = unpaired_folders
    viewer = make_napari_viewer()
    train = dock(viewer, "Train / finetune")
    run_dir = tmp_path / "run"
    train.degraded.value, train.clean.value, train.run_dir.value = degraded, clean, run_dir
    train.start_from.value = "scratch"
    train.steps.value, train.crop.value, train.device.value = 10_000, 32, "cpu"
    train.start_button.changed.emit(True)
    qtbot.waitUntil(lambda: train.progress.value >= 1, timeout=60_000)
    worker = train.worker
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and load_restorer(run_dir) is not None


def test_train_widget_trains_dcd_gan_and_restore_uses_it(make_napari_viewer, qtbot, unpaired_folders, tmp_path):
    from napari_cdd_dehaze.gan.checkpoint import bundled_model_available, read_meta

    degraded, clean = unpaired_folders
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(4).integers(0, 256, (40, 48, 3), dtype=np.uint8), name="rainy")
    restore = dock(viewer, "Restore")
    train = dock(viewer, "Train / finetune")
    train.method.value = "dcd-gan"
    assert train.start_from.value == ("derain" if bundled_model_available("derain") else "scratch")
    train.start_from.value = "scratch"  # a tiny network of its own
    assert train.lr.value == pytest.approx(1e-4)  # the DCD-GAN preset's learning rate
    run_dir = tmp_path / "derain"
    train.degraded.value, train.clean.value, train.run_dir.value = degraded, clean, run_dir
    train.steps.value, train.crop.value, train.device.value = 2, 32, "cpu"
    train.start_button.changed.emit(True)
    wait_idle(qtbot, train, 300_000)
    assert read_meta(latest_checkpoint(run_dir))["config"]["method"] == "dcd-gan"
    assert restore.model.value == str(run_dir.resolve())
    restore.image.value = layer
    restore.run_button.changed.emit(True)
    wait_idle(qtbot, restore)
    assert viewer.layers["rainy (restored)"].data.shape == layer.data.shape


def test_a_folder_restores_into_an_output_folder_with_progress_over_files(make_napari_viewer, qtbot, model_file,
                                                                          tmp_path, notifications):
    from napari_cdd_dehaze.io.image_files import read_image, write_image
    from napari_cdd_dehaze.widgets.restore_widget import FOLDER

    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png", "sub/c.tif"):
        write_image(tmp_path / "in" / name, rng.integers(0, 256, (40, 36, 3), dtype=np.uint8))
    (tmp_path / "in" / "sub" / "broken.png").write_bytes(b"not a png")
    viewer = make_napari_viewer()
    widget = dock(viewer, "Restore")
    widget.source.value = FOLDER
    assert not widget.in_folder.native.isHidden() and widget.image.native.isHidden()
    widget.in_folder.value, widget.out_folder.value = tmp_path / "in", tmp_path / "out"
    widget.model.value = CHECKPOINT_FILE
    widget.checkpoint.value = model_file
    widget.run_button.changed.emit(True)
    wait_idle(qtbot, widget)
    for name in ("a.png", "sub/b.png", "sub/c.tif"):
        assert read_image(tmp_path / "out" / name).shape == (40, 36, 3)
    assert "3 restored, 0 skipped" in widget.status.value and "1 failed" in widget.status.value
    assert any("broken.png" in str(n.message) for n in notifications)
    assert widget.progress.max == 4 and len(viewer.layers) == 0  # files, not layers
    widget.run_button.changed.emit(True)  # again: everything done is skipped
    wait_idle(qtbot, widget)
    assert "0 restored, 3 skipped" in widget.status.value


def test_a_multiband_layer_gets_a_band_picker_and_its_other_bands_stay(make_napari_viewer, qtbot):
    rng = np.random.default_rng(3)
    scene = (rng.random((6, 40, 48)) * 0.4 * 65535 + 0.5 * 65535).astype(np.uint16)
    viewer = make_napari_viewer()
    rgb = viewer.add_image(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), name="photo", rgb=True)
    layer = viewer.add_image(scene, name="scene")
    widget = dock(viewer, "Restore")
    widget.image.value = rgb
    assert widget.bands.native.isHidden()  # shown only where it applies
    widget.image.value = layer
    assert not widget.bands.native.isHidden()
    widget.model.value, widget.bands.value = "dcp", "4,3,2"
    widget.run_button.changed.emit(True)
    wait_idle(qtbot, widget)
    out = viewer.layers["scene (restored)"].data
    assert out.shape == scene.shape and out.dtype == scene.dtype
    assert all(np.array_equal(out[b], scene[b]) for b in (0, 4, 5))
    assert all(not np.array_equal(out[b], scene[b]) for b in (1, 2, 3))


def test_a_dask_layer_is_restored_plane_by_plane_into_a_mapped_array(make_napari_viewer, qtbot, model_file):
    """A lazy (dask) stack is restored with restore_out_of_core (memory: tests/test_batch.py): the result is a
    memory-mapped array, equal to restoring the stack in memory."""
    da = pytest.importorskip("dask.array")
    from napari_cdd_dehaze.gan.checkpoint import load_restorer as load
    from napari_cdd_dehaze.restore.engine import restore_array

    rng = np.random.default_rng(5)
    planes = [rng.integers(0, 4096, (96, 128), dtype=np.uint16) for _ in range(6)]
    stack = da.stack([da.from_array(p, chunks=p.shape) for p in planes])
    viewer = make_napari_viewer()
    layer = viewer.add_image(stack, name="lazy")
    widget = dock(viewer, "Restore")
    restore_with_file(widget, model_file, layer)
    wait_idle(qtbot, widget)
    out = viewer.layers["lazy (restored)"].data
    assert isinstance(out, np.memmap) and out.shape == stack.shape and out.dtype == stack.dtype
    assert np.abs(out.astype(int) - restore_array(load(model_file), np.asarray(stack))).max() <= 1


def test_a_dask_layer_can_be_restored_into_a_zarr_store_the_user_chose(make_napari_viewer, qtbot, model_file,
                                                                      tmp_path):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    from napari_cdd_dehaze.gan.checkpoint import load_restorer as load
    from napari_cdd_dehaze.restore.engine import restore_array

    rng = np.random.default_rng(6)
    stack = da.from_array(rng.integers(0, 4096, (3, 80, 96), dtype=np.uint16), chunks=(1, 80, 96))
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8), np.uint8), name="in memory")
    widget = dock(viewer, "Restore")
    widget.image.value = viewer.layers["in memory"]
    assert widget.zarr_out.native.isHidden()  # only for layers read lazily
    layer = viewer.add_image(stack, name="lazy")
    widget.image.value = layer
    assert not widget.zarr_out.native.isHidden()
    widget.zarr_out.value = tmp_path / "restored.zarr"
    restore_with_file(widget, model_file, layer)
    wait_idle(qtbot, widget)
    out = viewer.layers["lazy (restored)"].data
    on_disk = zarr.open_array(str(tmp_path / "restored.zarr"), mode="r")
    assert isinstance(out, zarr.Array) and on_disk.shape == stack.shape and on_disk.chunks == (1, 80, 96)
    assert np.abs(on_disk[:].astype(int) - restore_array(load(model_file), np.asarray(stack))).max() <= 1


def test_a_model_finetuned_in_the_viewer_exports_from_the_button(make_napari_viewer, qtbot, unpaired_folders,
                                                                  tmp_path, notifications):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    degraded, clean = unpaired_folders
    viewer = make_napari_viewer()
    train = dock(viewer, "Train / finetune")
    restore = dock(viewer, "Restore")
    train.export_row.button.changed.emit(True)  # nothing trained yet: said, not raised
    assert "Nothing to export yet" in str(notifications[-1].message)
    train.degraded.value, train.clean.value, train.run_dir.value = degraded, clean, tmp_path / "run"
    train.steps.value, train.device.value = 2, "cpu"
    train.start_button.changed.emit(True)
    wait_idle(qtbot, train, 300_000)
    train.export_row.path.value = tmp_path / "finetuned.onnx"
    train.export_row.button.changed.emit(True)
    qtbot.waitUntil(lambda: train.export_row.worker is None, timeout=120_000)
    assert "Exported the model" in str(notifications[-1].message)
    session = onnxruntime.InferenceSession(str(tmp_path / "finetuned.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": np.random.default_rng(0).random((1, 3, 512, 512), dtype=np.float32)})[0]
    assert out.shape == (1, 3, 512, 512) and 0 <= out.min() and out.max() <= 1
    # the Restore widget exports its chosen model; a classical method has nothing to export, said in a notification
    restore.model.value = "dcp"
    restore.export_row.path.value = tmp_path / "dcp.onnx"
    restore.export_row.button.changed.emit(True)
    qtbot.waitUntil(lambda: restore.export_row.worker is None, timeout=60_000)
    assert "Export failed" in str(notifications[-1].message) and "classical" in str(notifications[-1].message)
    assert not (tmp_path / "dcp.onnx").exists()


def test_settings_persist_between_napari_starts_and_reset_to_defaults(make_napari_viewer, isolated_plugin_settings,
                                                                     tmp_path, unpaired_folders):
    from napari import settings as napari_settings

    from napari_cdd_dehaze.widgets.restore_widget import RestoreWidget
    from napari_cdd_dehaze.widgets.settings import plugin_settings
    from napari_cdd_dehaze.widgets.train_widget import TrainWidget

    viewer = make_napari_viewer()
    restore = dock(viewer, "Restore")
    assert (restore.device.value, restore.tile.value, restore.precision.value) == ("auto", 0, "auto")
    settings = plugin_settings()
    settings.defaults.device, settings.defaults.tile = "cpu", 512   # as napari's Preferences would
    (tmp_path / "models" / "run-a").mkdir(parents=True)
    save_restorer(tmp_path / "models" / "run-a" / "restorer.safetensors",
                  ResnetGenerator(GeneratorConfig(width=8, blocks=2)), {"method": "test"})
    settings.defaults.model_folder = str(tmp_path / "models")
    train = TrainWidget(viewer)
    train.degraded.value, train.minutes.value = unpaired_folders[0], 3  # the user's choices are remembered
    restore.precision.value = "fp32"
    # napari starts again: the settings come from the file
    assert "tile: 512" in settings.config_path.read_text()
    napari_settings._clear_plugin_settings_cache()
    reopened, retrained = RestoreWidget(viewer), TrainWidget(viewer)
    assert (reopened.device.value, reopened.tile.value, reopened.precision.value) == ("cpu", 512, "fp32")
    assert str(tmp_path / "models" / "run-a") in [value for _, value in reopened._model_choices()]
    assert Path(retrained.degraded.value) == unpaired_folders[0] and retrained.minutes.value == 3
    assert Path(retrained.run_dir.value).parent == tmp_path / "models"  # new runs go to the model folder
    reopened.reset_button.changed.emit(True)
    assert (reopened.device.value, reopened.tile.value, reopened.precision.value) == ("auto", 0, "auto")
    assert plugin_settings().defaults.model_folder == "" and plugin_settings().last_used.minutes == 10

