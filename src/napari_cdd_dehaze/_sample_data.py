"""napari sample data: hazy and rainy images synthesised on the fly (no download, no napari import)."""
from __future__ import annotations

import numpy as np

from .imaging.synthesis import add_out_of_focus_background, demo_photos, random_haze, random_rain


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)


def hazy_outdoor_scene() -> list[tuple]:
    """scikit-image's motorcycle photo under synthetic haze (atmospheric scattering model), with the clear original."""
    photo = demo_photos()["motorcycle"]
    hazy = random_haze(photo, np.random.default_rng(0))
    return [(_to_u8(photo), {"name": "clear (reference)", "visible": False}, "image"),
            (_to_u8(hazy), {"name": "hazy scene"}, "image")]


def hazy_microscopy_image() -> list[tuple]:
    """scikit-image's cell micrograph as a 12-bit camera would record it under an out-of-focus veil (uint16)."""
    from skimage.data import cell

    specimen = cell().astype(np.float32) / 255
    hazy = add_out_of_focus_background(specimen)
    noisy = np.random.default_rng(0).poisson(hazy * 4095).clip(0, 4095)  # shot noise at 12 bits
    to_u16 = lambda a: np.rint(a).astype(np.uint16)
    limits = {"contrast_limits": (0, 4095), "colormap": "gray"}
    return [(to_u16(specimen * 4095), {"name": "specimen (reference)", "visible": False, **limits}, "image"),
            (to_u16(noisy), {"name": "hazy micrograph", **limits}, "image")]


def rainy_scene() -> list[tuple]:
    """scikit-image's motorcycle photo under synthetic rain streaks (seed 3), with the clear original."""
    photo = demo_photos()["motorcycle"]
    rainy = random_rain(photo, seed=3)
    return [(_to_u8(photo), {"name": "clear (reference)", "visible": False}, "image"),
            (_to_u8(rainy), {"name": "rainy scene"}, "image")]
