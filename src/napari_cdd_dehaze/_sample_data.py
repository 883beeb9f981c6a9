"""napari sample data: hazy scenes synthesised on the fly (no download, no napari import)."""
from __future__ import annotations

import numpy as np

from .synthesis import demo_photos, random_haze


def hazy_outdoor_scene() -> list[tuple]:
    """scikit-image's motorcycle photo under synthetic haze (atmospheric scattering model), with the clear original."""
    photo = demo_photos()["motorcycle"]
    hazy = random_haze(photo, np.random.default_rng(0))
    to_u8 = lambda a: np.rint(a * 255).astype(np.uint8)  # noqa: E731
    return [(to_u8(photo), {"name": "clear (reference)", "visible": False}, "image"),
            (to_u8(hazy), {"name": "hazy scene"}, "image")]
