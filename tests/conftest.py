"""Shared fixtures: a tiny network configuration and small unpaired folders made from scikit-image photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cdd_dehaze.gan.config import TrainConfig, preset
from napari_cdd_dehaze.imaging.synthesis import demo_photos, random_haze, random_rain
from napari_cdd_dehaze.io.image_files import write_image

torch.set_num_threads(2)


def tiny_config(**changes) -> TrainConfig:
    """A network small enough for unit tests: width 8, 2 blocks, 32² crops, on the method's ``paper`` preset."""
    base = dict(width=8, blocks=2, disc_width=8, crop=32, load_size=0, num_patches=16, nce_layers=(0, 4, 8, 11),
                head_dim=32, noise_dim=8, steps=4, checkpoint_every=2, device="cpu", precision="fp32")
    return preset("paper", **{**base, **changes})  # changes may name the method: method="dcd-gan"


def to_u8(a: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return demo_photos()


def _left_right_halves(photos, degraded: Path, clean: Path, degrade) -> tuple[Path, Path]:
    """degraded/: degraded left halves of 4 photos at half size; clean/: right halves (never the same pixels)."""
    rng = np.random.default_rng(0)
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photo = photos[name][::2, ::2]
        half = photo.shape[1] // 2
        write_image(degraded / f"{name}.png", to_u8(degrade(photo[:, :half], rng)))
        write_image(clean / f"{name}.png", to_u8(photo[:, half:]))
    return degraded, clean


@pytest.fixture
def unpaired_folders(tmp_path: Path, photos) -> tuple[Path, Path]:
    """Hazy left halves and clear right halves of four photos."""
    return _left_right_halves(photos, tmp_path / "degraded", tmp_path / "clean", random_haze)


@pytest.fixture
def rainy_folders(tmp_path: Path, photos) -> tuple[Path, Path]:
    """Heavy-rain left halves and clear right halves of four photos."""
    return _left_right_halves(photos, tmp_path / "rainy", tmp_path / "clear",
                              lambda image, rng: random_rain(image, rng, heavy=True))


def _working_scale_dehazer(**fields):
    """A tiny pooled dehazing restorer with a 64-pixel working scale (seeded), plus any restorer ``fields``."""
    from napari_cdd_dehaze.gan.networks import GeneratorConfig, ResnetGenerator

    torch.manual_seed(0)
    return ResnetGenerator(GeneratorConfig(width=8, blocks=2, output="dehaze", dark_patch=15, estimate_size=64,
                                           pool_airlight=1, **fields)).eval()


@pytest.fixture
def working_scale_dehazer():
    """The factory above: ``working_scale_dehazer(**restorer_fields)``."""
    return _working_scale_dehazer


@pytest.fixture
def check_inference_field(tmp_path):
    """``check(field, value, adjust, hazy)``: a working-scale restorer with ``field = value`` dehazes the 96×128
    ``hazy`` (H, W, 3) with the head's maps passed through ``adjust(small_unit, t, a) -> (t, a)`` (images
    within the working size too), differs from one without it, carries the field in its file, loads a file
    written before the field existed with it off, and takes it from a recipe for the restorer only."""
    from safetensors.torch import save

    from napari_cdd_dehaze.gan.checkpoint import load_restorer, read_safetensors, save_restorer
    from napari_cdd_dehaze.restore import working_scale
    from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array

    def check(field: str, value, adjust, hazy: np.ndarray) -> None:
        g, plain = _working_scale_dehazer(**{field: value}), _working_scale_dehazer()
        options = RestoreOptions(device="cpu")
        x = torch.from_numpy(np.ascontiguousarray(hazy.transpose(2, 0, 1)))[None].float() * 2 - 1
        with torch.no_grad():
            small = working_scale.shrink(lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1], 96, 128, 64, 1 << 24)
            t, a = adjust((small + 1) / 2, *g.scattering_maps(small, g.decode(small, g.encoder(small))))
            full_t = working_scale.upsample_rows(t, 96, 128, 0, 96, 128)
            expected = (((x + 1) / 2 - a) / full_t + a).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
        out = restore_array(g, hazy, options)
        assert np.abs(out - expected).max() < 1e-4
        assert np.abs(restore_array(plain, hazy, options) - out).max() > 0.01
        within = hazy[:40, :60]  # within the working size: the field applies as well
        assert np.abs(restore_array(g, within, options) - restore_array(plain, within, options)).max() > 0.01
        loaded = load_restorer(save_restorer(tmp_path / "r.safetensors", g))
        assert getattr(loaded.config, field) == value
        assert np.abs(restore_array(loaded, hazy, options) - out).max() < 1e-6
        tensors, metadata = read_safetensors(save_restorer(tmp_path / "old.safetensors", g))
        del metadata[field]  # a file written before the field existed
        (tmp_path / "old.safetensors").write_bytes(save(tensors, metadata=metadata))
        assert not getattr(load_restorer(tmp_path / "old.safetensors").config, field)
        recipe = TrainConfig(output="scattering", estimate_size=64, **{field: value})
        assert getattr(recipe.generator_config(), field) == value
        assert not getattr(recipe.generator_config("degrade"), field)

    return check


@pytest.fixture(autouse=True)
def precision_auto_is_fp32(monkeypatch):
    """Precision "auto" resolves to fp32 in every test, whatever CPU runs the suite: with native bf16 (AVX-512 BF16,
    AMX) it would be bf16, and outputs compared with fp32 references would depend on the machine. The tests of the
    choice itself set ``native_bf16`` back to a fixed answer, and bf16 is tested by asking for it."""
    from napari_cdd_dehaze.gan import trainer
    from napari_cdd_dehaze.restore import engine

    monkeypatch.setattr(engine, "native_bf16", lambda device: False)
    monkeypatch.setattr(trainer, "native_bf16", lambda device: False)


@pytest.fixture(autouse=True)
def isolated_plugin_settings(tmp_path_factory, monkeypatch):
    """Every test starts from the plugin's default settings, kept in a folder of its own (never the user's):
    the widgets remember what a test chooses, and the next test must not see it."""
    import sys

    if "napari" not in sys.modules:  # nothing here reads napari's settings
        yield None
        return
    from napari import settings as napari_settings

    folder = tmp_path_factory.mktemp("napari-settings")
    napari_settings._clear_plugin_settings_cache()
    monkeypatch.setattr(napari_settings, "_CFG_PATH", str(folder / "settings.yaml"))
    yield folder
    napari_settings._clear_plugin_settings_cache()
