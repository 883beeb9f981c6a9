"""The image primitives of the haze model, in torch, once: box mean, guided filter, luminance, dark channel,
airlight and He et al.'s transmission.

The networks, the training terms, the restore engine and the classical dehazers all use these, on whatever
device their tensors are on. Images are (B, C, H, W); "unit" means values in [0, 1].
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

AIRLIGHT_FRACTION = 0.001  # He et al.: the airlight is sought among the 0.1 % haziest pixels


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of (B, C, H, W) over each (2r+1)² window, the window cut off at the image's borders (not padded).

    Running sums along each axis (a rectangle cut by the borders is still a rectangle, so its mean is
    separable): the cost does not grow with the radius, which pooling's does (5× slower at r = 40).
    """
    for dim in (2, 3):
        n = x.shape[dim]
        sums = F.pad(x.cumsum(dim), (0, 0, 1, 0) if dim == 2 else (1, 0))
        index = torch.arange(n, device=x.device)
        hi, lo = (index + radius + 1).clamp(max=n), (index - radius).clamp(min=0)
        count = (hi - lo).to(x.dtype).view([-1, 1] if dim == 2 else [-1])
        x = (sums.index_select(dim, hi) - sums.index_select(dim, lo)) / count
    return x


def guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float = 1e-3) -> torch.Tensor:
    """He et al.'s guided filter (grey ``guide`` and ``source`` both (B, 1, H, W)); differentiable.

    Per window a linear fit source ≈ a·guide + b (ridge ``eps``), the coefficients averaged over the windows
    holding each pixel. Computed in float32, or in float64 when either input is (the classical dehazers).
    """
    slope, offset = guided_coefficients(guide, source, radius, eps)
    return slope * guide.to(slope.dtype) + offset


def guided_coefficients(guide: torch.Tensor, source: torch.Tensor, radius: int,
                        eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """The guided filter's averaged coefficients (slope, offset), each (B, 1, H, W): the filtered source is
    ``slope * guide + offset``. Computed on a shrunk copy and resized, they carry a coarse map to full size
    along the full-size guide's edges (He & Sun's fast guided filter; ``restore/working_scale.py``)."""
    dtype = torch.promote_types(torch.promote_types(guide.dtype, source.dtype), torch.float32)
    guide, source = guide.to(dtype), source.to(dtype)
    mean_g, mean_s = box_mean(guide, radius), box_mean(source, radius)
    a = (box_mean(guide * source, radius) - mean_g * mean_s) / (box_mean(guide * guide, radius) - mean_g ** 2 + eps)
    b = mean_s - a * mean_g
    return box_mean(a, radius), box_mean(b, radius)


LUMINANCE = (0.299, 0.587, 0.114)  # the guide's grey, as in He et al.'s code


def luminance(unit: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grey of (B, C, H, W): the luminance of RGB, the channel mean otherwise."""
    if unit.shape[1] == 3:
        weights = torch.tensor(LUMINANCE, dtype=unit.dtype, device=unit.device).view(1, 3, 1, 1)
        return (unit * weights).sum(dim=1, keepdim=True)
    return unit.mean(dim=1, keepdim=True)


def dark_channel(unit: torch.Tensor, patch: int = 15) -> torch.Tensor:
    """He et al.'s dark channel of (B, C, H, W): (B, 1, H, W), the least channel over a ``patch``² window.
    Max-pooling pads with −inf, so a window at the border sees only real pixels."""
    return -F.max_pool2d(-unit.amin(dim=1, keepdim=True), patch, stride=1, padding=patch // 2)


def estimate_airlight(unit: torch.Tensor, patch: int = 15, fraction: float = AIRLIGHT_FRACTION) -> torch.Tensor:
    """He et al.'s airlight of each image of ``unit`` (B, C, H, W) in [0, 1]: (B, C, 1, 1), the
    :func:`brightest_of_haziest` pixel by the dark channel over a ``patch`` window."""
    return brightest_of_haziest(unit, dark_channel(unit, patch), fraction)


def brightest_of_haziest(unit: torch.Tensor, haze: torch.Tensor, fraction: float = AIRLIGHT_FRACTION) -> torch.Tensor:
    """The airlight (B, C, 1, 1) of ``unit`` (B, C, H, W) by a haze map (B, 1, H, W), larger where hazier.

    Among the pixels whose haze is at least its ``fraction``-quantile from the top (ties included), the
    brightest (largest channel sum; the first in raster order on a tie): He et al.'s rule with the dark
    channel, Zhu et al.'s with their depth.
    """
    haze = haze.flatten(1)
    count = max(1, math.ceil(fraction * haze.shape[1]))
    threshold = haze.topk(count, dim=1).values[:, -1:]
    brightness = unit.sum(dim=1).flatten(1).masked_fill(haze < threshold, -math.inf)
    brightest = brightness.argmax(dim=1)
    return unit.flatten(2)[torch.arange(unit.shape[0]), :, brightest][..., None, None]


def dark_channel_transmission(unit: torch.Tensor, patch: int = 15, omega: float = 0.95,
                              radius: int = 15, guide: torch.Tensor | None = None) -> torch.Tensor:
    """He et al.'s transmission of each image of ``unit`` (B, C, H, W) in [0, 1]: (B, 1, H, W) in [0.1, 1].

    1 − ω·(dark channel of I/A) with :func:`estimate_airlight`'s A, refined by the guided filter on the
    grey image: a haze map that follows the scene's edges and owes nothing to a trained network. ``guide``
    (B, C, H, W) in [0, 1] refines it on another image's grey instead, so the map follows that image's edges.
    """
    airlight = estimate_airlight(unit, patch).clamp_min(1e-3)
    dark = dark_channel(unit / airlight, patch)
    return guided_filter(luminance(unit if guide is None else guide), 1 - omega * dark, radius).clamp(0.1, 1)


# NumPy entry points: (H, W) or (H, W, C) float images in [0, 1], computed by the functions above (float64 for
# the guided filter, as the classical methods' papers do), for callers that hold arrays.
def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(1, C, H, W) view of an (H, W) or (H, W, C) array."""
    image = np.asarray(image)
    hwc = image[..., None] if image.ndim == 2 else image
    return torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))[None]


def image_grey(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 luminance of an (H, W, 1|3) image (:func:`luminance`)."""
    return luminance(to_tensor(np.asarray(image, dtype=np.float32)))[0, 0].numpy()


def image_dark_channel(image: np.ndarray, patch: int = 15) -> np.ndarray:
    """(H, W) dark channel (:func:`dark_channel`) of an (H, W) or (H, W, C) image: its mean is a simple
    haze-density measure (haze lifts the darkest values towards the airlight)."""
    return dark_channel(to_tensor(image), patch)[0, 0].numpy()


def image_guided_filter(guide: np.ndarray, source: np.ndarray, radius: int = 60, eps: float = 1e-3) -> np.ndarray:
    """:func:`guided_filter` of two (H, W) arrays, in float64, as float32."""
    if guide.shape != source.shape or guide.ndim != 2:
        raise ValueError(f"guide {guide.shape} and source {source.shape} must be the same 2-D shape")
    as64 = lambda a: to_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    return guided_filter(as64(guide), as64(source), radius, eps)[0, 0].numpy().astype(np.float32)
