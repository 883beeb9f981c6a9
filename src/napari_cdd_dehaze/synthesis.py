"""Synthetic haze from the atmospheric scattering model, for samples, tests and training data.

I = J·t + A·(1 − t), with transmission t = exp(−β·d): J is the clean image in [0, 1], d a depth map
(metres, or any relative scale where ``beta`` is chosen to match), A the airlight (scalar or RGB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def add_haze(clean: np.ndarray, depth: np.ndarray, beta: float = 1.0,
             airlight: float | tuple[float, ...] = 0.9) -> np.ndarray:
    """Hazy version of ``clean`` (H, W[, C], float in [0, 1]) for ``depth`` (H, W)."""
    if depth.shape != clean.shape[:2]:
        raise ValueError(f"depth {depth.shape} does not match the image {clean.shape[:2]}")
    t = np.exp(-beta * depth.astype(np.float32))
    if clean.ndim == 3:
        t = t[..., None]
    a = np.asarray(airlight, dtype=np.float32)
    return np.clip(clean * t + a * (1.0 - t), 0.0, 1.0).astype(np.float32)


def ramp_depth(shape: tuple[int, int], near: float = 0.2, far: float = 1.0) -> np.ndarray:
    """A depth prior for photos without depth: far at the top of the frame, near at the bottom."""
    h, w = shape
    rows = np.linspace(far, near, h, dtype=np.float32)
    return np.repeat(rows[:, None], w, axis=1)


def dark_channel(image: np.ndarray, patch: int = 15) -> np.ndarray:
    """He et al.'s dark channel: per-pixel minimum over colour, then a ``patch``×``patch`` minimum filter.

    Its mean is a simple haze-density measure (haze lifts the darkest values towards the airlight).
    """
    from scipy.ndimage import minimum_filter

    darkest = image.min(axis=-1) if image.ndim == 3 else image
    return minimum_filter(darkest, size=patch, mode="nearest")


def demo_photos() -> dict[str, np.ndarray]:
    """Colour photos that ship with scikit-image (no download), as float32 in [0, 1]."""
    from skimage import data

    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(),
              "rocket": data.rocket(), "motorcycle": data.stereo_motorcycle()[0]}
    return {name: (image[..., :3] / 255.0).astype(np.float32) for name, image in photos.items()}


def random_haze(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``clean`` under haze of random density and airlight, depth from :func:`ramp_depth`."""
    beta = rng.uniform(1.2, 2.5)
    airlight = rng.uniform(0.75, 0.95) + rng.uniform(-0.03, 0.03, size=3 if clean.ndim == 3 else 1)
    return add_haze(clean, ramp_depth(clean.shape[:2]), beta, tuple(np.clip(airlight, 0, 1)))


def write_demo_folders(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write a small unpaired dehazing set built from scikit-image's photos.

    ``degraded/`` holds hazy *left* halves and ``clean/`` the untouched *right* halves of four photos,
    so the two folders never show the same pixels; ``test/hazy`` and ``test/clear`` hold a fifth photo
    (held out of training) with and without haze, for measuring.
    """
    from .image_files import write_image

    out, rng = Path(out), np.random.default_rng(seed)
    folders = {name: out / name for name in ("degraded", "clean", "test/hazy", "test/clear")}
    to_u8 = lambda a: np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    for name, photo in demo_photos().items():
        if name == "motorcycle":
            write_image(folders["test/clear"] / f"{name}.png", to_u8(photo))
            write_image(folders["test/hazy"] / f"{name}.png", to_u8(random_haze(photo, rng)))
            continue
        half = photo.shape[1] // 2
        write_image(folders["degraded"] / f"{name}_left.png", to_u8(random_haze(photo[:, :half], rng)))
        write_image(folders["clean"] / f"{name}_right.png", to_u8(photo[:, half:]))
    return folders


def add_out_of_focus_background(clean: np.ndarray, strength: float = 0.7, sigma: float = 30.0,
                                offset: float = 0.08) -> np.ndarray:
    """Widefield-microscopy "haze": light from out-of-focus planes adds a blurred copy of the specimen.

    ``clean`` (H, W) in [0, 1]; the result is ``(1 − s)·clean + s·blur(clean, sigma)·gain + offset`` with the
    gain chosen so the veil's mean matches the specimen's — low contrast, lifted blacks, like a thick sample.
    """
    from scipy.ndimage import gaussian_filter

    clean = clean.astype(np.float32)
    veil = gaussian_filter(clean, sigma, mode="reflect")
    veil *= clean.mean() / max(float(veil.mean()), 1e-6)
    return np.clip((1 - strength) * clean + strength * veil + offset, 0.0, 1.0).astype(np.float32)


def depth_prior(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible relative depth (0 near … 1 far) for a photo without measured depth.

    Outdoor photos are far at the top and near at the bottom: a vertical ramp with a random horizon,
    steepness and tilt, plus gentle large-scale variation, refined with a guided filter on the photo so
    that the haze changes at object edges rather than across them.
    """
    from scipy.ndimage import gaussian_filter, zoom

    from .classical import grey, guided_filter

    h, w = clean.shape[:2]
    horizon, near, gamma = rng.uniform(0.15, 0.55), rng.uniform(0.05, 0.35), rng.uniform(0.6, 1.6)
    rows = np.clip((np.linspace(0, 1, h) - horizon) / (1 - horizon), 0, 1) ** gamma
    ramp = 1 - (1 - near) * rows[:, None] + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, w)[None, :]
    coarse = gaussian_filter(rng.normal(size=(max(2, h // 32), max(2, w // 32))), 1.5)
    variation = zoom(coarse, (h / coarse.shape[0], w / coarse.shape[1]), order=1)[:h, :w]
    depth = ramp + 0.08 * variation / max(float(np.abs(variation).max()), 1e-6)
    refined = guided_filter(grey(clean), depth.astype(np.float32), radius=max(4, min(h, w) // 24), eps=1e-3)
    return np.clip(refined, 0, 1).astype(np.float32)


def measured_depth(depth_mm: np.ndarray) -> np.ndarray:
    """Metric depth (0 = unknown) → relative depth in [0, 1] of the scene's far point, holes filled."""
    from scipy.ndimage import distance_transform_edt

    valid = depth_mm > 0
    if not valid.any():
        raise ValueError("the depth map holds no valid value")
    nearest = distance_transform_edt(~valid, return_distances=False, return_indices=True)
    filled = depth_mm[tuple(nearest)].astype(np.float32)
    return filled / filled.max()


def haze_with_depth(clean: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``clean`` under haze of random density and (slightly tinted) airlight for a relative ``depth``.

    The density is drawn so that the farthest point keeps 5–55 % of its light (β from 0.6 to 3 per unit depth).
    """
    beta = rng.uniform(0.6, 3.0)
    airlight = np.clip(rng.uniform(0.7, 1.0) + rng.uniform(-0.04, 0.04, size=3 if clean.ndim == 3 else 1), 0, 1)
    return add_haze(clean, depth, beta, tuple(airlight))
