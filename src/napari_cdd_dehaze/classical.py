"""Classical single-image dehazing without training: the dark channel prior and the colour attenuation prior.

Both invert the scattering model I = J·t + A·(1 − t) (see :mod:`~napari_cdd_dehaze.synthesis`): estimate the
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
from scipy.ndimage import minimum_filter

from . import networks
from .synthesis import dark_channel

LUMINANCE = np.array(networks.LUMINANCE, dtype=np.float32)  # the grey guide, as in He et al.'s code
CAP_THETA = (0.121779, 0.959710, -0.780245)  # Zhu et al. 2015, learned on 500 synthetic training images


def _as_hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {image.shape}")
    return image


def grey(image: np.ndarray) -> np.ndarray:
    """(H, W) luminance of an (H, W, 1|3) image."""
    return image[..., 0] if image.shape[-1] == 1 else image @ LUMINANCE


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2r+1)² window around each pixel, the window cut off at the borders (not padded).

    Two running sums (one per axis), so the cost does not depend on the radius.
    """
    out = np.asarray(x, dtype=np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        sums = np.concatenate([np.zeros_like(out.take([0], axis=axis)), np.cumsum(out, axis=axis)], axis=axis)
        index = np.arange(n)
        hi, lo = np.minimum(index + radius + 1, n), np.maximum(index - radius, 0)
        count = (hi - lo).astype(np.float64).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = (sums.take(hi, axis=axis) - sums.take(lo, axis=axis)) / count
    return out


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int = 60, eps: float = 1e-3) -> np.ndarray:
    """He et al.'s guided filter with a grey (H, W) guide: an edge-preserving smoothing of ``source``.

    In each window the output is a linear function a·guide + b fitted to ``source`` (ridge ``eps`` on a);
    the coefficients are averaged over all windows that contain a pixel.
    """
    if guide.shape != source.shape or guide.ndim != 2:
        raise ValueError(f"guide {guide.shape} and source {source.shape} must be the same 2-D shape")
    mean_g, mean_s = box_mean(guide, radius), box_mean(source, radius)
    cov_gs = box_mean(guide * source.astype(np.float64), radius) - mean_g * mean_s
    var_g = box_mean(np.square(guide, dtype=np.float64), radius) - mean_g ** 2
    a = cov_gs / (var_g + eps)
    b = mean_s - a * mean_g
    return (box_mean(a, radius) * guide + box_mean(b, radius)).astype(np.float32)


def estimate_airlight(image: np.ndarray, haze_map: np.ndarray, fraction: float = 0.001) -> np.ndarray:
    """Airlight (C,): among the ``fraction`` of pixels where ``haze_map`` is largest, the brightest input pixel."""
    flat_map, pixels = haze_map.reshape(-1), image.reshape(-1, image.shape[-1])
    count = max(1, int(np.ceil(fraction * flat_map.size)))
    candidates = np.argpartition(flat_map, flat_map.size - count)[-count:]
    brightest = candidates[np.argmax(pixels[candidates].sum(axis=1))]
    return pixels[brightest].astype(np.float32)


def _recover(image: np.ndarray, transmission: np.ndarray, airlight: np.ndarray) -> np.ndarray:
    restored = (image - airlight) / transmission[..., None] + airlight
    return np.clip(restored, 0.0, 1.0).astype(np.float32)


def dark_channel_prior(image: np.ndarray, patch: int = 15, omega: float = 0.95, radius: int = 60,
                       eps: float = 1e-3, t0: float = 0.1) -> np.ndarray:
    """Dehaze with He et al.'s dark channel prior; same layout as ``image``, float32 in [0, 1]."""
    hwc = _as_hwc(image)
    airlight = estimate_airlight(hwc, dark_channel(hwc, patch))
    raw = 1.0 - omega * dark_channel(hwc / np.maximum(airlight, 1e-3), patch)
    transmission = np.maximum(guided_filter(grey(hwc), raw, radius, eps), t0)
    return _recover(hwc, transmission, airlight).reshape(np.shape(image))


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
    depth = minimum_filter(attenuation_depth(hwc), size=radius, mode="reflect")
    airlight = estimate_airlight(hwc, depth)
    refined = guided_filter(grey(hwc), depth, guide_radius, eps)
    transmission = np.clip(np.exp(-beta * refined), *t_range)
    return _recover(hwc, transmission, airlight).reshape(np.shape(image))


def identity(image: np.ndarray) -> np.ndarray:
    """The input unchanged (as float32): the 'hazy input' row of an evaluation."""
    return np.asarray(image, dtype=np.float32)


@dataclass(frozen=True)
class ClassicalDehazer:
    """A training-free dehazer that :func:`~napari_cdd_dehaze.restore.restore_array` runs plane by plane, whole.

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
