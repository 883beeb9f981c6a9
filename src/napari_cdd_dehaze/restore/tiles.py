"""Inference for the ResNet generator at any image size: whole, streamed layer by layer, or in tiles.

* **Whole** (up to ``whole_max_pixels``, 2048² by default): one forward pass.
* **Streamed** (beyond, the default): :mod:`~napari_cdd_dehaze.restore.streamed` runs one layer at a time over row
  bands, keeping every layer's exact InstanceNorm statistics, so the result equals the whole-image pass (to
  float rounding) in memory bounded by a band and not by the image.
* **Tiles** (an explicit ``tile`` size): every layer on one window. Two things make tiles disagree with the
  whole image, and each has its cure here:

  - *Borders.* A tile's edge pixels see reflection padding instead of their true neighbours. Every tile is
    run with a *margin* of real context at least the network's receptive-field radius wide, and only its
    core is kept. Cores and margins are multiples of 4 so that the stride-2 layers see the same pixel grid.
  - *InstanceNorm statistics.* Each tile would normalise with its own mean and variance. The statistics of
    every norm layer are recorded once per image (:class:`~napari_cdd_dehaze.gan.networks.InstanceNorm`) and
    imposed on all tiles: exact up to ``stats_max_pixels``; a larger image is first reduced by block
    averaging to at most ``approx_stats_pixels`` for the statistics pass, an approximation (all tiles share
    it, so there are no seams, but the tone can differ from the whole-image pass; measured in
    ``benchmarks/README.md``). Refining that estimate by tiled passes that re-measure every layer was tried
    and rejected: each pass makes one more layer exact, but the layers behind it can move further away (a
    test network went from 0.77 to 1.0 max error after one pass). Streaming replaced it.

  Tiles cost a statistics pass plus the margins' recomputation (about 2.3× a whole pass at 1024² with
  512-pixel tiles); they remain for comparison and for callers that want windows.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from napari_cdd_dehaze.gan.networks import InstanceNorm, ResnetGenerator

from .streamed import StreamedRunner
from .working_scale import run_at_working_scale

ReadWindow = Callable[[int, int, int, int], torch.Tensor]  # (y0, y1, x0, x1) → (1, C, h, w) in [-1, 1]


class Cancelled(Exception):
    """Raised between tiles when the caller's stop flag is set."""


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
    """Run ``x`` once and return the (mean, variance) every InstanceNorm layer computed."""
    norms = _norms(generator)
    for m in norms:
        m.record, m.recorded = True, None
    try:
        generator(x)
        return [m.recorded for m in norms]
    finally:
        for m in norms:
            m.record, m.recorded = False, None


@contextlib.contextmanager
def imposed_statistics(generator: ResnetGenerator, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Within the block every InstanceNorm of ``generator`` normalises with ``stats``."""
    norms = _norms(generator)
    if len(norms) != len(stats):
        raise ValueError(f"{len(stats)} recorded statistics for {len(norms)} norm layers")
    for m, s in zip(norms, stats):
        m.imposed = s
    try:
        yield
    finally:
        for m in norms:
            m.imposed = None


def _is_too_large(exc: BaseException) -> bool:
    """Out of memory, or a tensor past the 32-bit indexing some GPU kernels need (a whole 8192² image is)."""
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "32-bit index" in text


class TiledRunner:
    """Runs a generator over a (padded, multiple-of-4) image, whole or window by window.

    ``tile``: 0 runs the whole image at once; ``None`` runs it whole up to ``whole_max_pixels`` and streamed
    (:class:`~napari_cdd_dehaze.restore.streamed.StreamedRunner`: exact, bounded memory) beyond; a number is the tile
    core size (rounded down to a multiple of 4, at least 64). ``margin`` is the context around each core
    (default: the receptive-field radius). Streaming keeps up to ``stream_memory_bytes`` of intermediate
    layers in RAM (after up to ``stream_device_bytes`` in a GPU's memory) and the rest in files in
    ``scratch_dir``; ``band_elements`` bounds one band. ``should_stop()`` is called before each tile or band;
    when it returns True, :class:`Cancelled` is raised. ``estimate_size`` (a dehazing restorer's working scale,
    :mod:`~napari_cdd_dehaze.restore.working_scale`): an image with a longer side is dehazed from maps estimated on a
    copy shrunk to it, whatever the other settings (every image, with ``pool_airlight``, ``guided_upsample``
    or ``airlight_floor``, so that all get one airlight, the same guided transmission and the same airlight
    floor). When the device runs out of memory (or a tensor is past a
    GPU kernel's 32-bit indexing), the tile size is halved (streaming: the stores leave the device, then the band
    is halved) and the image started again.
    """

    def __init__(self, generator: ResnetGenerator, device: torch.device, tile: int | None = None,
                 margin: int | None = None, whole_max_pixels: int = 2048 * 2048, stats_max_pixels: int = 2048 * 2048,
                 approx_stats_pixels: int = 2048 * 2048, autocast_dtype: torch.dtype | None = None,
                 should_stop: Callable[[], bool] | None = None, band_elements: int = 1 << 24,
                 stream_memory_bytes: int = 1 << 29, scratch_dir: str | None = None,
                 stream_device_bytes: int = 0, estimate_size: int = 0) -> None:
        self.generator, self.device = generator.to(device).eval(), device
        self.tile = tile if tile in (None, 0) else max(64, tile // 4 * 4)
        self.whole_max_pixels = whole_max_pixels
        self.margin = default_margin(generator) if margin is None else -(-margin // 4) * 4
        self.stats_max_pixels, self.approx_stats_pixels = stats_max_pixels, min(approx_stats_pixels, stats_max_pixels)
        self.autocast_dtype = autocast_dtype
        self.should_stop = should_stop
        self.band_elements, self.stream_memory_bytes, self.scratch_dir = band_elements, stream_memory_bytes, scratch_dir
        self.stream_device_bytes = stream_device_bytes
        self.estimate_size = estimate_size

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.autocast_dtype is None:
            return self.generator(x).float()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self.generator(x).float()

    @torch.inference_mode()
    def statistics(self, read: ReadWindow, height: int, width: int) -> list:
        """Norm statistics of the image, from a block-averaged copy when it has more than ``stats_max_pixels``."""
        factor = max(1, math.ceil(math.sqrt(height * width / self.approx_stats_pixels)))
        if height * width <= self.stats_max_pixels:
            return record_statistics(self.generator, read(0, height, 0, width).to(self.device))
        band = factor * max(1, 256 // factor)  # rows per read, a multiple of the factor
        rows = [F.avg_pool2d(read(y, min(y + band, height // factor * factor), 0, width // factor * factor), factor)
                for y in range(0, height // factor * factor, band)]
        small = torch.cat(rows, dim=2)
        small = small[..., : small.shape[-2] // 4 * 4, : small.shape[-1] // 4 * 4]
        return record_statistics(self.generator, small.to(self.device))

    @torch.inference_mode()
    def run(self, read: ReadWindow, write: Callable[[int, int, int, int, torch.Tensor], None],
            height: int, width: int, progress: Callable[[int, int], None] | None = None) -> None:
        """Restore the ``height``×``width`` image behind ``read`` (both multiples of 4) into ``write``.

        ``progress(done, total)`` is called after each tile.
        """
        config = self.generator.config
        if self.estimate_size and (max(height, width) > self.estimate_size or config.pool_airlight
                                   or config.guided_upsample or config.airlight_floor):
            return run_at_working_scale(self.generator, self.device, read, write, height, width, self.estimate_size,
                                        self.band_elements, self.autocast_dtype, self._check_stop, progress)
        if self.tile is None and height * width > self.whole_max_pixels:
            return self._run_streamed(read, write, height, width, progress)
        tile, stats = self.tile or max(height, width), None  # 0 or None (small image): whole
        while True:
            try:
                if tile >= max(height, width):  # whole image: its own statistics, one pass
                    self._check_stop()
                    write(0, height, 0, width, self._forward(read(0, height, 0, width)))
                    if progress is not None:
                        progress(1, 1)
                    return
                if stats is None:
                    stats = self.statistics(read, height, width)
                with imposed_statistics(self.generator, stats):
                    self._run_tiles(read, write, height, width, tile, progress)
                return
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not _is_too_large(exc) or tile <= 64:
                    raise
                tile = max(64, min(tile, max(height, width)) // 2 // 4 * 4)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _run_streamed(self, read, write, height: int, width: int, progress) -> None:
        band, device_bytes = self.band_elements, self.stream_device_bytes
        while True:
            try:
                StreamedRunner(self.generator, self.device, band_elements=band, device_memory_bytes=device_bytes,
                               memory_bytes=self.stream_memory_bytes, scratch_dir=self.scratch_dir,
                               autocast_dtype=self.autocast_dtype,
                               check_stop=self._check_stop).run(read, write, height, width, progress)
                return
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not _is_too_large(exc) or (band <= 1 << 16 and not device_bytes):
                    raise
                if device_bytes:  # first move the stores off the device, then shrink the bands
                    device_bytes = 0
                else:
                    band //= 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("restoration cancelled")

    def _run_tiles(self, read, write, height: int, width: int, tile: int, progress) -> None:
        t, m = tile, self.margin
        cores = [(y, x) for y in range(0, height, t) for x in range(0, width, t)]
        for done, (y, x) in enumerate(cores):
            self._check_stop()
            y1, x1 = min(y + t, height), min(x + t, width)
            oy0, ox0, oy1, ox1 = max(0, y - m), max(0, x - m), min(height, y1 + m), min(width, x1 + m)
            out = self._forward(read(oy0, oy1, ox0, ox1))
            write(y, y1, x, x1, out[..., y - oy0: y1 - oy0, x - ox0: x1 - ox0])
            if progress is not None:
                progress(done + 1, len(cores))
