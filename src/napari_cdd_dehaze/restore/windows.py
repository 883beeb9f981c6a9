"""What every restore strategy shares: the window callbacks, the stop signal, and what is found band by band
(a block-averaged copy, the image's airlight).

A strategy restores the padded (multiple-of-4) image behind a :data:`ReadWindow` into a :data:`WriteWindow`,
never holding more of it than a window or a band, so the caller may back both with memory-mapped files.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from napari_cdd_dehaze.gan.networks import ResnetGenerator
from napari_cdd_dehaze.imaging.primitives import AIRLIGHT_FRACTION, dark_channel

ReadWindow = Callable[[int, int, int, int], torch.Tensor]  # (y0, y1, x0, x1) → (1, C, h, w) in [-1, 1]
WriteWindow = Callable[[int, int, int, int, torch.Tensor], None]  # (y0, y1, x0, x1, (1, C, h, w) in [-1, 1])
Progress = Callable[[int, int], None] | None  # (units done, total)


class Cancelled(Exception):
    """Raised between tiles or bands when the caller's stop flag is set."""


def block_average(read: ReadWindow, rows: int, cols: int, factor: int, band: int) -> torch.Tensor:
    """The top-left ``rows``×``cols`` of the image behind ``read`` averaged over ``factor``² blocks, read ``band``
    rows at a time (``rows``, ``cols`` and ``band`` multiples of ``factor``): a shrunk copy in memory bounded by
    a band. The statistics pass of large tiled images and the working scale both shrink this way."""
    return torch.cat([F.avg_pool2d(read(y, min(y + band, rows), 0, cols).float(), factor)
                      for y in range(0, rows, band)], dim=2)


def is_too_large(exc: BaseException) -> bool:
    """Out of memory, or a tensor past the 32-bit indexing some GPU kernels need (a whole 8192² image is)."""
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "32-bit index" in text


def banded_airlight(rows: Callable[[int, int], torch.Tensor], height: int, width: int, patch: int, band_rows: int,
                    fraction: float = AIRLIGHT_FRACTION) -> torch.Tensor:
    """:func:`~napari_cdd_dehaze.imaging.primitives.estimate_airlight` (1, C, 1, 1) of the image behind ``rows``
    ((y0, y1) → (1, C, y1 − y0, width) in [-1, 1]), read ``band_rows`` rows at a time: the same pixel, so exactly
    the same airlight, in memory bounded by a band.

    Each band (with the window's reach of halo rows) proposes its pixels that could still be among the
    ``count`` haziest of the image; the running list keeps only those at or above its own ``count``-th value.
    """
    count, reach = max(1, math.ceil(fraction * height * width)), patch // 2
    dark_kept = torch.empty(0, dtype=torch.float32)
    index_kept, bright_kept, colour_kept = torch.empty(0, dtype=torch.long), torch.empty(0), None
    for y0 in range(0, height, band_rows):
        y1 = min(y0 + band_rows, height)
        s, e = max(0, y0 - reach), min(height, y1 + reach)
        unit = (rows(s, e).float() + 1) / 2
        dark = dark_channel(unit, patch)
        dark, unit = dark[0, 0, y0 - s:y1 - s].flatten().cpu(), unit[0, :, y0 - s:y1 - s].flatten(1).cpu()
        dark_kept = torch.cat([dark_kept, dark])
        index_kept = torch.cat([index_kept, torch.arange(y0 * width, y1 * width)])
        bright_kept = torch.cat([bright_kept, unit.sum(dim=0)])
        colour_kept = unit if colour_kept is None else torch.cat([colour_kept, unit], dim=1)
        threshold = dark_kept.topk(min(count, dark_kept.numel())).values[-1]
        keep = dark_kept >= threshold
        dark_kept, index_kept, bright_kept = dark_kept[keep], index_kept[keep], bright_kept[keep]
        colour_kept = colour_kept[:, keep]
    best = bright_kept.max()  # the brightest candidate; on a tie the first in raster order, as the whole pass
    pick = index_kept.masked_fill(bright_kept < best, height * width).argmin()
    return colour_kept[:, pick].reshape(1, -1, 1, 1)


def floor_estimate(generator: ResnetGenerator, rows: Callable[[int, int], torch.Tensor], height: int, width: int,
                   band_rows: int) -> torch.Tensor | None:
    """The grey airlight estimate (1, 1, 1, 1) a restorer with ``airlight_floor`` floors with, of the whole image
    behind ``rows``, found band by band; None without a floor."""
    patch = generator.config.airlight_floor if generator.head is not None else 0
    if not patch:
        return None
    return banded_airlight(rows, height, width, patch, band_rows).mean(dim=1, keepdim=True)
