"""Shared fixtures: a tiny network configuration and small unpaired folders made from scikit-image photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cdd_dehaze.config import TrainConfig, preset
from napari_cdd_dehaze.image_files import write_image
from napari_cdd_dehaze.synthesis import demo_photos, random_haze, random_rain

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
