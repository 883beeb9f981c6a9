"""The restore engine's dispatcher: which strategy runs an image, and the retry when the device runs short.

Each strategy is a module behind the same interface (the padded image behind a
:data:`~napari_cdd_dehaze.restore.windows.ReadWindow`, restored into a ``WriteWindow``):

* **working scale** (:mod:`.working_scale`): a dehazing restorer with an ``estimate_size`` estimates the haze
  on a shrunk copy and composes the output at full size band by band;
* **whole** (:mod:`.whole`, up to ``whole_max_pixels``, 2048² by default): one forward pass;
* **streamed** (:mod:`.streamed`, beyond, the default): one layer at a time over row bands with every layer's
  exact InstanceNorm statistics, equal to the whole pass in memory bounded by a band;
* **tiles** (:mod:`.tiles`, an explicit ``tile`` size): every layer on one window, with margins and shared
  norm statistics, seamless.

A new strategy is a module with a ``run_…(…, read, write, height, width, …, progress)`` function and one branch
in :meth:`Dispatcher.run`.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from napari_cdd_dehaze.gan.networks import ImageAirlight, ResnetGenerator

from . import tiles
from .streamed import StreamedRunner
from .whole import run_whole
from .windows import Cancelled, ReadWindow, floor_estimate, is_too_large
from .working_scale import CPU_BAND_ELEMENTS, run_at_working_scale


class Dispatcher:
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
        self.margin = tiles.default_margin(generator) if margin is None else -(-margin // 4) * 4
        self.stats_max_pixels, self.approx_stats_pixels = stats_max_pixels, min(approx_stats_pixels, stats_max_pixels)
        self.autocast_dtype = autocast_dtype
        self.should_stop = should_stop
        self.band_elements, self.stream_memory_bytes, self.scratch_dir = band_elements, stream_memory_bytes, scratch_dir
        self.stream_device_bytes = stream_device_bytes
        self.estimate_size = estimate_size
        self._channels_last: ResnetGenerator | None = None

    def _forward(self, x: torch.Tensor, whole: bool = False) -> torch.Tensor:
        """The generator on ``x``; a ``whole`` image on the CPU runs channels-last (tiles impose statistics on the
        generator itself, so they run it as it is)."""
        x = x.to(self.device)
        if whole and self.device.type == "cpu":
            generator, x = self._channels_last_generator(), x.contiguous(memory_format=torch.channels_last)
        else:
            generator = self.generator
        if self.autocast_dtype is None:
            return generator(x).float()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return generator(x).float()

    def _channels_last_generator(self) -> ResnetGenerator:
        """A copy of the generator with channels-last weights (the caller's model keeps its own layout): with its
        input channels-last too, every layer of a whole pass stays channels-last (norms included, see
        ``networks.InstanceNorm``), and oneDNN's convolutions run 1.8× faster than on channels-first tensors."""
        if self._channels_last is None:
            self._channels_last = copy.deepcopy(self.generator).to(memory_format=torch.channels_last)
        return self._channels_last

    @torch.inference_mode()
    def statistics(self, read: ReadWindow, height: int, width: int) -> list:
        """Norm statistics of the image for the tiles (:func:`~napari_cdd_dehaze.restore.tiles.image_statistics`)."""
        return tiles.image_statistics(self.generator, self.device, read, height, width, self.stats_max_pixels,
                                      self.approx_stats_pixels)

    @torch.inference_mode()
    def run(self, read: ReadWindow, write: Callable[[int, int, int, int, torch.Tensor], None],
            height: int, width: int, progress: Callable[[int, int], None] | None = None) -> None:
        """Restore the ``height``×``width`` image behind ``read`` (both multiples of 4) into ``write``.

        ``progress(done, total)`` is called after each tile.
        """
        config = self.generator.config
        if self.estimate_size and (max(height, width) > self.estimate_size or config.pool_airlight
                                   or config.guided_upsample or config.airlight_floor):
            band = self.band_elements if self.device.type == "cuda" else min(self.band_elements, CPU_BAND_ELEMENTS)
            return run_at_working_scale(self.generator, self.device, read, write, height, width, self.estimate_size,
                                        band, self.autocast_dtype, self._check_stop, progress)
        if self.tile is None and height * width > self.whole_max_pixels:
            return self._run_streamed(read, write, height, width, progress)
        tile, stats, airlight = self.tile or max(height, width), None, None  # 0 or None (small image): whole
        while True:
            try:
                if tile >= max(height, width):  # whole image: its own statistics, one pass
                    return run_whole(lambda x: self._forward(x, whole=True), read, write, height, width,
                                     self._check_stop, progress)
                if stats is None:
                    stats = self.statistics(read, height, width)
                    airlight = self._image_airlight(read, height, width)
                with tiles.imposed_statistics(self.generator, stats), self.generator.imposing_airlight(airlight):
                    tiles.run_tiles(self._forward, read, write, height, width, tile, self.margin, self._check_stop,
                                    progress)
                return
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not is_too_large(exc) or tile <= 64:
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
                if not is_too_large(exc) or (band <= 1 << 16 and not device_bytes):
                    raise
                if device_bytes:  # first move the stores off the device, then shrink the bands
                    device_bytes = 0
                else:
                    band //= 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _image_airlight(self, read: ReadWindow, height: int, width: int) -> ImageAirlight | None:
        """The airlight terms every tile composes with: the pooled airlight of the statistics pass (exact when its
        statistics are) and the floor's estimate of the whole image, found band by band."""
        if not self.generator.airlight_is_global:
            return None
        rows = lambda y0, y1: read(y0, y1, 0, width).to(self.device)  # noqa: E731
        estimate = floor_estimate(self.generator, rows, height, width, band_rows=256)
        return ImageAirlight(self.generator.recorded_airlight, estimate)

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("restoration cancelled")
