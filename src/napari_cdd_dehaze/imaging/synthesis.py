"""Synthetic haze and rain, for samples, tests and training data.

Haze follows the atmospheric scattering model I = J·t + A·(1 − t), with transmission t = exp(−β·d): J is
the clean image in [0, 1], d a depth map (metres, or any relative scale where ``beta`` is chosen to match),
A the airlight (scalar or RGB).

Rain is a sum of streak layers added to the image (I = J + Σ bᵢ·Sᵢ, clipped), optionally under a uniform
veil (I ← (1 − v)·I + v·A, the "rain accumulation" haze of heavy rain). A streak layer is a sparse random
field of drops of random strength, motion-blurred along one angle by a line kernel and softened by a
Gaussian (one FFT convolution with the blurred line kernel, so a megapixel layer takes milliseconds).
Every random choice comes from a seed or a ``numpy`` Generator.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RainLayer:
    """One layer of parallel streaks.

    ``density``: fraction of pixels that start a drop; ``length`` in pixels; ``angle`` in degrees from
    vertical (positive leans right at the bottom); ``blur``: Gaussian σ across the streak, in pixels;
    ``brightness``: what an isolated streak of a full-strength drop adds at its centre (image range 0–1).
    """

    density: float = 0.003
    length: float = 20.0
    angle: float = 10.0
    blur: float = 0.8
    brightness: float = 0.7

    def __post_init__(self) -> None:
        if not (0 <= self.density <= 1 and self.length >= 1 and self.blur >= 0 and self.brightness >= 0):
            raise ValueError(f"invalid rain layer {self}: density in [0, 1], length ≥ 1, blur ≥ 0, brightness ≥ 0")


def line_kernel(length: float, angle: float, blur: float = 0.0) -> np.ndarray:
    """Motion-blur kernel: a line of ``length`` pixels at ``angle`` degrees from vertical, then a Gaussian ``blur``.

    Scaled so that its peak is 1: convolving a single drop of strength s gives a streak of height s.
    """
    from scipy.ndimage import gaussian_filter

    half = length / 2
    pad = int(np.ceil(3 * blur)) + 1
    size = 2 * (int(np.ceil(half)) + pad) + 1
    centre = size // 2
    t = np.linspace(-half, half, int(np.ceil(2 * length)) + 1)  # two samples per pixel of line
    theta = np.deg2rad(angle)
    y, x = centre + t * np.cos(theta), centre + t * np.sin(theta)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    kernel = np.zeros((size + 1, size + 1))
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(kernel, (y0 + dy, x0 + dx), weight)  # bilinear splat of each sample
    kernel = kernel[:size, :size]
    if blur > 0:
        kernel = gaussian_filter(kernel, blur)
    return (kernel / kernel.max()).astype(np.float32)


def rain_streaks(shape: tuple[int, int], layer: RainLayer, rng: np.random.Generator) -> np.ndarray:
    """One layer of streaks (H, W), float32 ≥ 0, before brightness: drops of strength in [0.5, 1] smeared by
    :func:`line_kernel`."""
    from scipy.signal import fftconvolve

    hit = rng.random(shape) < layer.density
    drops = np.where(hit, rng.uniform(0.5, 1.0, shape), 0.0).astype(np.float32)
    kernel = line_kernel(layer.length, layer.angle, layer.blur)
    return np.maximum(fftconvolve(drops, kernel, mode="same"), 0.0).astype(np.float32)


def add_rain(clean: np.ndarray, layers: list[RainLayer] | RainLayer, seed: int | np.random.Generator = 0,
             veil: float = 0.0, airlight: float = 0.9) -> np.ndarray:
    """``clean`` (H, W[, C], float in [0, 1]) with the streak ``layers`` added, then a ``veil`` of ``airlight``.

    The same ``seed`` gives the same rain; streaks are grey (rain is colourless), so all channels get the
    same amount.
    """
    if not 0 <= veil < 1:
        raise ValueError(f"veil must lie in [0, 1), got {veil}")
    rng = np.random.default_rng(seed)
    layers = [layers] if isinstance(layers, RainLayer) else list(layers)
    rain = np.zeros(clean.shape[:2], np.float32)
    for layer in layers:
        rain += layer.brightness * rain_streaks(clean.shape[:2], layer, rng)
    rainy = clean + (rain[..., None] if clean.ndim == 3 else rain)
    rainy = np.clip(rainy, 0.0, 1.0)
    if veil > 0:
        rainy = (1 - veil) * rainy + veil * airlight
    return rainy.astype(np.float32)


def random_rain_layers(shape: tuple[int, int], rng: np.random.Generator, max_layers: int = 2,
                       heavy: bool = False) -> list[RainLayer]:
    """1…``max_layers`` streak layers of one common slant (±5° each), with lengths that scale with the image.

    ``heavy``: three times the drops and brighter streaks (the regime of Rain100H rather than Rain100L).
    """
    short = min(shape)
    angle = rng.uniform(-25, 25)
    density = (0.0012, 0.0045) if heavy else (0.0004, 0.0015)
    brightness = (0.5, 0.8) if heavy else (0.3, 0.6)
    layers = []
    for _ in range(int(rng.integers(1, max_layers + 1))):
        layers.append(RainLayer(density=rng.uniform(*density), length=max(3.0, short * rng.uniform(0.04, 0.12)),
                                angle=angle + rng.uniform(-5, 5), blur=rng.uniform(0.4, 1.2),
                                brightness=rng.uniform(*brightness)))
    return layers


def random_rain(clean: np.ndarray, seed: int | np.random.Generator = 0, heavy: bool = False,
                veil: bool = True) -> np.ndarray:
    """``clean`` under rain of random slant, length, density, blur and brightness, and (``veil``) a light
    veil of up to 0.15 — up to 0.35 for ``heavy`` rain (see :func:`random_rain_layers`)."""
    rng = np.random.default_rng(seed)
    layers = random_rain_layers(clean.shape[:2], rng, heavy=heavy)
    strength = rng.uniform(0.0, 0.35 if heavy else 0.15) if veil else 0.0
    return add_rain(clean, layers, rng, veil=strength, airlight=rng.uniform(0.75, 0.95))


def _write_unpaired_folders(out: str | Path, degrade: Callable[[np.ndarray, np.random.Generator], np.ndarray],
                            degraded_test: str, seed: int) -> dict[str, Path]:
    from napari_cdd_dehaze.io.image_files import write_image

    out, rng = Path(out), np.random.default_rng(seed)
    folders = {name: out / name for name in ("degraded", "clean", f"test/{degraded_test}", "test/clear")}
    to_u8 = lambda a: np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    for name, photo in demo_photos().items():
        if name == "motorcycle":
            write_image(folders["test/clear"] / f"{name}.png", to_u8(photo))
            write_image(folders[f"test/{degraded_test}"] / f"{name}.png", to_u8(degrade(photo, rng)))
            continue
        half = photo.shape[1] // 2
        write_image(folders["degraded"] / f"{name}_left.png", to_u8(degrade(photo[:, :half], rng)))
        write_image(folders["clean"] / f"{name}_right.png", to_u8(photo[:, half:]))
    return folders


def write_demo_folders(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write a small unpaired dehazing set built from scikit-image's photos.

    ``degraded/`` holds hazy *left* halves and ``clean/`` the untouched *right* halves of four photos,
    so the two folders never show the same pixels; ``test/hazy`` and ``test/clear`` hold a fifth photo
    (held out of training) with and without haze, for measuring.
    """
    return _write_unpaired_folders(out, random_haze, "hazy", seed)

def write_rain_demo_folders(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """As :func:`write_demo_folders`, with rain: ``degraded/``, ``clean/``, ``test/rainy``, ``test/clear``."""
    return _write_unpaired_folders(out, random_rain, "rainy", seed)


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

    from .primitives import image_grey, image_guided_filter

    h, w = clean.shape[:2]
    horizon, near, gamma = rng.uniform(0.15, 0.55), rng.uniform(0.05, 0.35), rng.uniform(0.6, 1.6)
    rows = np.clip((np.linspace(0, 1, h) - horizon) / (1 - horizon), 0, 1) ** gamma
    ramp = 1 - (1 - near) * rows[:, None] + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, w)[None, :]
    coarse = gaussian_filter(rng.normal(size=(max(2, h // 32), max(2, w // 32))), 1.5)
    variation = zoom(coarse, (h / coarse.shape[0], w / coarse.shape[1]), order=1)[:h, :w]
    depth = ramp + 0.08 * variation / max(float(np.abs(variation).max()), 1e-6)
    refined = image_guided_filter(image_grey(clean), depth.astype(np.float32), radius=max(4, min(h, w) // 24),
                                  eps=1e-3)
    return np.clip(refined, 0, 1).astype(np.float32)


def lift_nearest(depth: np.ndarray, nearest: float) -> np.ndarray:
    """``depth`` (0 near … 1 far) squeezed so that its nearest point lies at ``nearest`` of the far point.

    A room, a scene seen from the air or a view into a fog bank has no clear foreground: the haze lies almost
    evenly over the frame. ``depth_prior`` always puts the nearest point at 5–35 % of the far one.
    """
    if not 0 <= nearest <= 1:
        raise ValueError(f"nearest must be a fraction of the far depth in [0, 1], got {nearest}")
    return (nearest + (1 - nearest) * depth).astype(np.float32)


def measured_depth(depth_mm: np.ndarray) -> np.ndarray:
    """Metric depth (0 = unknown) → relative depth in [0, 1] of the scene's far point, holes filled."""
    from scipy.ndimage import distance_transform_edt

    valid = depth_mm > 0
    if not valid.any():
        raise ValueError("the depth map holds no valid value")
    nearest = distance_transform_edt(~valid, return_distances=False, return_indices=True)
    filled = depth_mm[tuple(nearest)].astype(np.float32)
    return filled / filled.max()


def haze_with_depth(clean: np.ndarray, depth: np.ndarray, rng: np.random.Generator,
                    beta_range: tuple[float, float] = (0.6, 3.0),
                    airlight_range: tuple[float, float] = (0.7, 1.0)) -> np.ndarray:
    """``clean`` under haze of random density and (slightly tinted) airlight for a relative ``depth``.

    The density β per unit depth is drawn uniformly from ``beta_range``: by default the farthest point keeps
    5–55 % of its light (β from 0.6 to 3); ``(0.1, 3.0)`` also gives light haze (up to 90 % kept). The airlight's
    grey level is drawn uniformly from ``airlight_range``, then each channel is tinted by up to ±0.04.
    """
    beta = rng.uniform(*beta_range)
    return add_haze(clean, depth, beta, random_airlight(rng, airlight_range, 3 if clean.ndim == 3 else 1))


def random_airlight(rng: np.random.Generator, grey_range: tuple[float, float] = (0.7, 1.0),
                    channels: int = 3) -> tuple[float, ...]:
    """An airlight whose grey level is drawn uniformly from ``grey_range``, each channel tinted by up to ±0.04."""
    grey = rng.uniform(*grey_range)
    return tuple(np.clip(grey + rng.uniform(-0.04, 0.04, size=channels), 0, 1))
