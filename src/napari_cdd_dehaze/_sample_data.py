"""napari sample data: hazy and rainy scenes synthesised on the fly (no download, no napari import)."""
from __future__ import annotations

import numpy as np

from .synthesis import demo_photos, random_haze, random_rain


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)


def hazy_outdoor_scene() -> list[tuple]:
    """scikit-image's motorcycle photo under synthetic haze (atmospheric scattering model), with the clear original."""
    photo = demo_photos()["motorcycle"]
    hazy = random_haze(photo, np.random.default_rng(0))
    return [(_to_u8(photo), {"name": "clear (reference)", "visible": False}, "image"),
            (_to_u8(hazy), {"name": "hazy scene"}, "image")]


def rainy_scene() -> list[tuple]:
    """scikit-image's motorcycle photo under synthetic rain streaks (seed 3), with the clear original."""
    photo = demo_photos()["motorcycle"]
    rainy = random_rain(photo, seed=3)
    return [(_to_u8(photo), {"name": "clear (reference)", "visible": False}, "image"),
            (_to_u8(rainy), {"name": "rainy scene"}, "image")]
