"""Image quality measures for dehazing: with a reference (PSNR, SSIM, CIEDE2000) and without (mean dark channel).

All take float images in [0, 1]: (H, W, 3) RGB, or grey (H, W) which is treated as R = G = B.

No-reference haze: the mean of He et al.'s dark channel (15-pixel patches) — haze lifts the darkest values
towards the airlight, so lower means less haze (or, with a strong dehazer, crushed shadows: read it beside
the images). FADE (Choi et al. 2015) is not included: see the project README.
"""
from __future__ import annotations

import math

import numpy as np

from .primitives import image_dark_channel

PSNR_CAP_DB = 100.0  # identical images: PSNR is infinite; reported as this cap so means and JSON stay finite


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _check_pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, test = _rgb(reference), _rgb(test)
    if reference.shape != test.shape:
        raise ValueError(f"images differ in size: {reference.shape} vs {test.shape}")
    return reference, test


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for data range 1, capped at :data:`PSNR_CAP_DB` (identical images)."""
    reference, test = _check_pair(reference, test)
    mse = float(np.mean((reference - test) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10.0 * math.log10(1.0 / mse))


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean structural similarity (scikit-image; 7×7 uniform windows, colour channels averaged)."""
    from skimage.metrics import structural_similarity

    reference, test = _check_pair(reference, test)
    side = min(reference.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"image too small for SSIM: {reference.shape[:2]}")
    return float(structural_similarity(reference, test, channel_axis=-1, data_range=1.0, win_size=win))


def ciede2000(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean CIEDE2000 colour difference (sRGB → CIELAB, D65); 0 for identical images, ~2.3 just noticeable."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    reference, test = _check_pair(reference, test)
    rows = max(1, (1 << 20) // reference.shape[1])  # bands of ~1 M pixels bound the temporary arrays
    total = 0.0
    for y in range(0, reference.shape[0], rows):
        total += float(np.sum(deltaE_ciede2000(rgb2lab(reference[y:y + rows]), rgb2lab(test[y:y + rows]))))
    return total / (reference.shape[0] * reference.shape[1])


def mean_dark_channel(image: np.ndarray, patch: int = 15) -> float:
    """Mean of the dark channel: a no-reference haze density (lower is less haze)."""
    return float(np.mean(image_dark_channel(_rgb(image), patch)))
