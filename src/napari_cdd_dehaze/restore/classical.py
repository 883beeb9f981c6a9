"""Classical single-image dehazing without training: the dark channel prior and the colour attenuation prior.

Both invert the scattering model I = J·t + A·(1 − t) (see :mod:`~napari_cdd_dehaze.imaging.synthesis`): estimate the
airlight A and the transmission t, then J = (I − A) / t + A. They differ in how they estimate t:

* **Dark channel prior** (He, Sun, Tang, CVPR 2009 / TPAMI 2011): in haze-free outdoor patches some colour channel
  is nearly black, so the dark channel of I/A measures the haze: t = 1 − ω·dark(I/A), ω = 0.95 keeping a little
  haze for depth perception. The blocky patch estimate is refined with the guided filter (He, Sun, Tang, ECCV
  2010), the grey input as guide.
* **Colour attenuation prior** (Zhu, Mai, Shao, TIP 2015): haze raises brightness and lowers saturation with depth,
  and a linear model learned by the authors gives depth d = θ0 + θ1·V + θ2·S from HSV value and saturation;
  t = exp(−β·d). The depth is min-filtered (r = 15) and refined with the guided filter. The authors' model has a
  random error term (σ = 0.041337) that their code adds to the depth; it describes the fit, not the restoration,
  and is left out here so results are deterministic.

Airlight (both papers): among the 0.1 % of pixels with the largest dark channel (or depth), the one that is
brightest in the input. All functions take float images in [0, 1], (H, W, 3) RGB or grey (H, W) / (H, W, 1); a
grey image is its own dark channel and has zero saturation. Outputs are float32, clipped to [0, 1].
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from napari_cdd_dehaze.imaging.primitives import (
    brightest_of_haziest,
    dark_channel,
    estimate_airlight,
    image_grey,
    image_guided_filter,
    to_tensor,
)

CAP_THETA = (0.121779, 0.959710, -0.780245)  # Zhu et al. 2015, learned on 500 synthetic training images


def _as_hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {image.shape}")
    return image


def _recover(image: np.ndarray, transmission: np.ndarray, airlight: np.ndarray) -> np.ndarray:
    restored = (image - airlight) / transmission[..., None] + airlight
    return np.clip(restored, 0.0, 1.0).astype(np.float32)


def dark_channel_prior(image: np.ndarray, patch: int = 15, omega: float = 0.95, radius: int = 60,
                       eps: float = 1e-3, t0: float = 0.1) -> np.ndarray:
    """Dehaze with He et al.'s dark channel prior; same layout as ``image``, float32 in [0, 1]."""
    hwc = _as_hwc(image)
    x = to_tensor(hwc)
    airlight = estimate_airlight(x, patch)
    raw = 1.0 - omega * dark_channel(x / airlight.clamp_min(1e-3), patch)[0, 0].numpy()
    transmission = np.maximum(image_guided_filter(image_grey(hwc), raw, radius, eps), t0)
    return _recover(hwc, transmission, airlight.flatten().numpy()).reshape(np.shape(image))


def attenuation_depth(image: np.ndarray) -> np.ndarray:
    """Zhu et al.'s scene depth (H, W) from HSV value and saturation (grey: saturation 0)."""
    value = image.max(axis=-1)
    chroma = value - image.min(axis=-1)
    saturation = np.divide(chroma, value, out=np.zeros_like(value), where=value > 0)
    theta0, theta1, theta2 = CAP_THETA
    return (theta0 + theta1 * value + theta2 * saturation).astype(np.float32)


def colour_attenuation_prior(image: np.ndarray, radius: int = 15, beta: float = 1.0, guide_radius: int = 30,
                             eps: float = 1e-3, t_range: tuple[float, float] = (0.05, 1.0)) -> np.ndarray:
    """Dehaze with Zhu et al.'s colour attenuation prior; same layout as ``image``, float32 in [0, 1].

    ``guide_radius`` 30 is the authors' released setting (a 60-pixel guided-filter neighbourhood).
    """
    hwc = _as_hwc(image)
    depth = dark_channel(to_tensor(attenuation_depth(hwc)), radius)  # the min filter over the window
    airlight = brightest_of_haziest(to_tensor(hwc), depth).flatten().numpy()
    refined = image_guided_filter(image_grey(hwc), depth[0, 0].numpy(), guide_radius, eps)
    transmission = np.clip(np.exp(-beta * refined), *t_range)
    return _recover(hwc, transmission, airlight).reshape(np.shape(image))


def identity(image: np.ndarray) -> np.ndarray:
    """The input unchanged (as float32): the 'hazy input' row of an evaluation."""
    return np.asarray(image, dtype=np.float32)


@dataclass(frozen=True)
class ClassicalDehazer:
    """A training-free dehazer that :func:`~napari_cdd_dehaze.restore.engine.restore_array` runs plane by plane, whole.

    ``function`` maps an (H, W, C) float32 image in [0, 1] (C = 3, or 1 for grey) to the same. Whole planes,
    never tiles: the airlight is a global estimate.
    """

    name: str
    label: str
    function: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    channels: int = 3

    def __call__(self, unit: np.ndarray) -> np.ndarray:
        return np.clip(self.function(_as_hwc(unit)), 0.0, 1.0).astype(np.float32)


CLASSICAL = {
    "dcp": ClassicalDehazer("dcp", "dark channel prior (He et al. 2011; no training)", dark_channel_prior),
    "cap": ClassicalDehazer("cap", "colour attenuation prior (Zhu et al. 2015; no training)",
                            colour_attenuation_prior),
    "identity": ClassicalDehazer("identity", "identity (input unchanged; the hazy baseline)", identity),
}
