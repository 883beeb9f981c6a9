"""Tiles: every layer of the generator on one window at a time, seamless.

Two things make tiles disagree with the whole image, and each has its cure here:

* *Borders.* A tile's edge pixels see reflection padding instead of their true neighbours. Every tile is run
  with a *margin* of real context at least the network's receptive-field radius wide, and only its core is
  kept. Cores and margins are multiples of 4 so that the stride-2 layers see the same pixel grid.
* *InstanceNorm statistics.* Each tile would normalise with its own mean and variance. The statistics of every
  norm layer are recorded once per image (:class:`~napari_cdd_dehaze.gan.networks.InstanceNorm`) and imposed on
  all tiles: exact up to ``stats_max_pixels``; a larger image is first reduced by block averaging to at most
  ``approx_stats_pixels`` for the statistics pass, an approximation (all tiles share it, so there are no seams,
  but the tone can differ from the whole-image pass; docs/benchmarks.md). Refining that estimate by tiled passes
  that re-measure every layer was tried and rejected: each pass makes one more layer exact, but the layers
  behind it can move further away (a test network went from 0.77 to 1.0 max error after one pass). Streaming
  (:mod:`~napari_cdd_dehaze.restore.streamed`) is the exact way to bounded memory.

Tiles cost a statistics pass plus the margins' recomputation (about 2.3× a whole pass at 1024² with 512-pixel
tiles); they remain for comparison and for callers that want windows.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from napari_cdd_dehaze.gan.networks import InstanceNorm, ResnetGenerator

from .windows import Progress, ReadWindow, WriteWindow, block_average


def receptive_field(generator: ResnetGenerator) -> int:
    """Receptive field (pixels, one side to the other) of one output pixel of ``generator``."""
    field, jump = 1, 1
    for m in generator.modules():
        if isinstance(m, nn.Conv2d):
            field += (m.kernel_size[0] - 1) * jump
            jump *= m.stride[0]
        elif isinstance(m, nn.ConvTranspose2d):
            jump //= m.stride[0]
            field += (m.kernel_size[0] - 1) * max(jump, 1)
        elif isinstance(m, nn.Upsample):
            jump = max(jump // int(m.scale_factor), 1)
    return field


def default_margin(generator: ResnetGenerator) -> int:
    """Half the receptive field plus the head's window reach (dark channel, guided filter), up to a multiple of 4."""
    return -(-(receptive_field(generator) // 2 + 1 + generator.config.head_reach) // 4) * 4


def _norms(generator: nn.Module) -> list[InstanceNorm]:
    return [m for m in generator.modules() if isinstance(m, InstanceNorm)]


def record_statistics(generator: ResnetGenerator, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run ``x`` once and return the (mean, variance) every InstanceNorm layer computed.

    A restorer that pools its airlight also keeps the pooled value of this pass in ``recorded_airlight``.
    """
    norms = _norms(generator)
    for m in norms:
        m.record, m.recorded = True, None
    generator.record_airlight, generator.recorded_airlight = True, None
    try:
        generator(x)
        return [m.recorded for m in norms]
    finally:
        generator.record_airlight = False
        for m in norms:
            m.record, m.recorded = False, None


@contextlib.contextmanager
def imposed_statistics(generator: ResnetGenerator, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Within the block every InstanceNorm of ``generator`` normalises with ``stats``."""
    norms = _norms(generator)
    if len(norms) != len(stats):
        raise ValueError(f"{len(stats)} recorded statistics for {len(norms)} norm layers")
    for m, s in zip(norms, stats, strict=False):
        m.imposed = s
    try:
        yield
    finally:
        for m in norms:
            m.imposed = None


def image_statistics(generator: ResnetGenerator, device: torch.device, read: ReadWindow, height: int, width: int,
                     stats_max_pixels: int, approx_stats_pixels: int) -> list:
    """Norm statistics of the image, from a block-averaged copy when it has more than ``stats_max_pixels``."""
    factor = max(1, math.ceil(math.sqrt(height * width / approx_stats_pixels)))
    if height * width <= stats_max_pixels:
        return record_statistics(generator, read(0, height, 0, width).to(device))
    band = factor * max(1, 256 // factor)  # rows per read, a multiple of the factor
    small = block_average(read, height // factor * factor, width // factor * factor, factor, band)
    small = small[..., : small.shape[-2] // 4 * 4, : small.shape[-1] // 4 * 4]
    return record_statistics(generator, small.to(device))


def run_tiles(forward: Callable[[torch.Tensor], torch.Tensor], read: ReadWindow, write: WriteWindow, height: int,
              width: int, tile: int, margin: int, check_stop: Callable[[], None], progress: Progress) -> None:
    """Restore tile by tile (cores ``tile`` wide, with ``margin`` of context); the caller imposes the statistics."""
    t, m = tile, margin
    cores = [(y, x) for y in range(0, height, t) for x in range(0, width, t)]
    for done, (y, x) in enumerate(cores):
        check_stop()
        y1, x1 = min(y + t, height), min(x + t, width)
        oy0, ox0, oy1, ox1 = max(0, y - m), max(0, x - m), min(height, y1 + m), min(width, x1 + m)
        out = forward(read(oy0, oy1, ox0, ox1))
        write(y, y1, x, x1, out[..., y - oy0: y1 - oy0, x - ox0: x1 - ox0])
        if progress is not None:
            progress(done + 1, len(cores))
