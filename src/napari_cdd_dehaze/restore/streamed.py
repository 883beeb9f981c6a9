"""Whole-image inference in bounded memory: the generator run layer by layer over row bands.

Tiles cannot reproduce a whole-image pass exactly, because every InstanceNorm needs its layer's statistics
over the *whole* image, and those are known only once the layer has seen all of it. So the order is turned
around: instead of every layer on one window (tiles), one layer on every window (a *stage*), band of rows by
band of rows. Each stage

* reads its input band with a few rows of *halo* from the previous stage's store, normalising it on the fly
  with that store's exact statistics (plus the ReLU, or the residual sum, that follows the norm);
* runs the convolution (with its padding, stride, or upsampling) and keeps the rows of the band's core;
* writes them to its own store and adds them to per-channel running moments (merged in float64).

Bands span the full width, so columns are computed exactly as in the whole-image pass; rows near a band's
edge see the band's own padding instead of their neighbours, so each band is computed with a halo of extra
rows (as far as the stage's kernel reaches, 1–3) that is thrown away. The output therefore equals
``generator(x)`` up to float rounding (tests check 1e-4 on [-1, 1]), with no statistics approximated, at about
the cost of one forward pass plus the halos (a few percent) and the elementwise norm/residual work.

Stores hold the raw (pre-norm) conv outputs at full, half or quarter resolution. On a GPU they stay in the
GPU's memory while their sizes together stay under ``device_memory_bytes`` (no copies to the host and back:
27× faster at 4096² on an H200); then in RAM while under ``memory_bytes``; beyond, each is a file in ``scratch_dir``
(a temporary file that nothing outlives, :class:`~napari_cdd_dehaze.restore.stores.FileStore`): file pages are
the kernel's cache, not this process's memory, so peak RSS stays at a few bands whatever the image size.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from napari_cdd_dehaze.gan.networks import AIRLIGHT_OFFSET, ImageAirlight, InstanceNorm, ResidualBlock, ResnetGenerator

from .stores import FileStore, MemoryStore, Moments
from .windows import ReadWindow, WriteWindow, floor_estimate

Rows = Callable[[int, int], torch.Tensor]  # (y0, y1) → (1, C, y1 - y0, W) float32 on the compute device


@dataclass
class Stage:
    """One convolution (with its padding, stride or upsampling) and the norm that follows it (None: none).

    ``halo``: rows of context each side of a band, in input rows: the kernel's reach (3 for 7×7, 1 for 3×3,
    1 input row for an upsampling 3×3), rounded up to even for a stride-2 stage so bands keep its pixel grid.
    """

    ops: Callable[[torch.Tensor], torch.Tensor]
    in_channels: int
    out_channels: int
    scale: float
    norm: InstanceNorm | None
    halo: int


@dataclass
class Stored:
    """A stage's output rows: raw, with the normalisation its exact statistics give, or already normalised.

    A stage that ran in one band (the whole image at once, the usual case up to a few megapixels) normalises
    its output itself with the norm layer, exactly as the whole-image pass does (``inv_std`` and ``shift``
    None); a stage of several bands stores raw rows and their merged statistics.
    """

    store: MemoryStore | FileStore
    inv_std: torch.Tensor | None = None  # (1, C, 1, 1)
    shift: torch.Tensor | None = None    # −mean / std, (1, C, 1, 1)

    def normalised(self, y0: int, y1: int, device: torch.device, keep: bool = False) -> torch.Tensor:
        """Rows y0…y1 as the norm layer outputs them, in a tensor the caller may overwrite.

        Raw rows are normalised as x · s + b in one pass, in place where they are ours (a fresh read from a
        file, a copy to another device, or all the rows of an in-memory store: a stage that reads every row in
        one band reads them only once), which saves allocating and first-touching a layer-sized tensor.
        ``keep``: the rows will be read again, so an in-memory store keeps them.
        """
        store = self.store
        if isinstance(store, MemoryStore) and (y0, y1) == (0, store.shape[1]) and not keep:
            raw, private = store.take(), True
        else:
            raw, private = store.read(y0, y1), isinstance(store, FileStore)
        rows = raw[None].to(device)
        private = private or rows.data_ptr() != raw.data_ptr()
        if self.inv_std is None:
            return rows if private else rows.clone()
        if private:
            return torch.addcmul(self.shift, rows, self.inv_std, out=rows)
        return torch.addcmul(self.shift, rows, self.inv_std)

    def close(self) -> None:
        self.store.close()


def plan(generator: ResnetGenerator) -> list[Stage]:
    """The generator's stages in order: stem, two downsamplings, two per residual block, two upsamplings, output.

    Raises ValueError for a layout other than :class:`ResnetGenerator`'s (nothing else is streamed).
    """
    def expect(module: nn.Module, kind: type) -> nn.Module:
        if not isinstance(module, kind):
            raise ValueError(f"streamed inference: expected {kind.__name__}, found {type(module).__name__}")
        return module

    c, w = generator.config.channels, generator.config.width
    enc = list(generator.encoder)
    stages = [Stage(nn.Sequential(expect(enc[0], nn.ReflectionPad2d), expect(enc[1], nn.Conv2d)), c, w, 1,
                    expect(enc[2], InstanceNorm), 3)]
    for i, mult in ((4, 1), (7, 2)):
        stages.append(Stage(expect(enc[i], nn.Conv2d), w * mult, w * mult * 2, 0.5,
                            expect(enc[i + 1], InstanceNorm), 2))
    for block in enc[10:]:
        body = list(expect(block, ResidualBlock).body)
        for i in (0, 4):  # pad, conv, norm (, relu)
            stages.append(Stage(nn.Sequential(expect(body[i], nn.ReflectionPad2d), expect(body[i + 1], nn.Conv2d)),
                                w * 4, w * 4, 1, expect(body[i + 2], InstanceNorm), 1))
    ops, channels = [], w * 4
    for module in generator.decoder:
        if isinstance(module, InstanceNorm):
            stages.append(Stage(nn.Sequential(*ops), channels, module.num_features, 2, module, 1))
            ops, channels = [], module.num_features
        elif not isinstance(module, nn.ReLU):
            ops.append(module)
    if generator.head is None:
        stages.append(Stage(nn.Sequential(*ops), channels, c, 1, None, 3))
    else:
        head, n = generator.head, generator.config.channels

        def scattering(t: torch.Tensor) -> torch.Tensor:  # t = [decoded, intensity priors (the input first)]
            return generator.compose(t[:, channels:channels + n], head(t))
        # the dark channel's window and the guided filter reach further than the head's 7×7 conv
        stages.append(Stage(scattering, head[1].in_channels, c, 1, None, 3 + generator.config.head_reach))
    if len(stages) != 3 + 2 * generator.config.blocks + 3:
        raise ValueError(f"streamed inference: unexpected layout ({len(stages)} stages)")
    return stages


class StreamedRunner:
    """Runs a :class:`ResnetGenerator` over an image of any size, stage by stage (see the module docstring).

    ``band_elements`` bounds one band's input (channels × rows × width, halo and upsampling included).
    Stores go to the first place with room: the compute device's own memory up to ``device_memory_bytes``
    (for a GPU; 0 keeps them off it), RAM up to ``memory_bytes``, then files in ``scratch_dir`` (default: the
    system's temporary folder). ``check_stop()`` is called before every band (it raises to
    stop); ``progress(done, total)`` after every band, counted over all stages.
    """

    def __init__(self, generator: ResnetGenerator, device: torch.device, band_elements: int = 1 << 24,
                 memory_bytes: int = 1 << 29, scratch_dir: str | None = None,
                 autocast_dtype: torch.dtype | None = None, check_stop: Callable[[], None] | None = None,
                 device_memory_bytes: int = 0) -> None:
        self.generator, self.device = generator.to(device).eval(), device
        self.band_elements, self.memory_bytes, self.scratch_dir = band_elements, memory_bytes, scratch_dir
        self.device_memory_bytes = device_memory_bytes
        self.autocast_dtype = autocast_dtype
        self.check_stop = check_stop or (lambda: None)
        self.stages = plan(generator)
        self._in_use = {"device": 0, "ram": 0}  # bytes of open stores in each place

    def band_rows(self, stage: Stage, width: int) -> int:
        """Core rows per band of ``stage`` (input rows; a multiple of 4) for an input ``width`` wide.

        The largest tensor of a band bounds it: the input, the output (``scale``² times the pixels), or for
        an upsampling stage the upsampled input.
        """
        pixels = stage.scale ** 2
        per_row = width * max(stage.in_channels * max(1.0, pixels), stage.out_channels * pixels)
        rows = int(self.band_elements // per_row) - 2 * stage.halo
        return max(4, rows // 4 * 4)

    def _bands(self, height: int, width: int) -> int:
        total = 0
        for stage in self.stages:
            total += -(-height // self.band_rows(stage, width))
            height, width = int(height * stage.scale), int(width * stage.scale)
        return total

    @torch.inference_mode()
    def run(self, read: ReadWindow,
            write: WriteWindow, height: int, width: int,
            progress: Callable[[int, int], None] | None = None) -> None:
        """Restore the ``height``×``width`` image behind ``read`` (multiples of 4) into ``write``, by row bands."""
        if height % 4 or width % 4:
            raise ValueError(f"image size must be a multiple of 4, got {height}×{width}")
        device, stages = self.device, iter(self.stages)
        self._ticks, self._total, self._progress = 0, self._bands(height, width), progress

        def image(y0: int, y1: int) -> torch.Tensor:
            return read(y0, y1, 0, width).to(device)

        def norm_relu(stored: Stored) -> Rows:
            return lambda y0, y1: torch.relu_(stored.normalised(y0, y1, device))

        def residual(kept: MemoryStore | FileStore, stored: Stored) -> Rows:
            return lambda y0, y1: kept.read(y0, y1)[None].to(device) + stored.normalised(y0, y1, device)

        with contextlib.ExitStack() as cleanup:  # every store is closed, also on an error or a stop
            def new_store(channels: int, rows: int, cols: int) -> MemoryStore | FileStore:
                store = self._new_store(channels, rows, cols)
                cleanup.callback(store.close)
                return store

            h, w = height, width
            stored = self._stage(next(stages), image, h, w, new_store)
            for _ in range(2):  # the downsamplings
                previous, stored = stored, self._stage(next(stages), norm_relu(stored), h, w, new_store)
                previous.close()
                h, w = h // 2, w // 2
            source, done_with = norm_relu(stored), [stored]
            for _ in range(self.generator.config.blocks):
                kept = new_store(4 * self.generator.config.width, h, w)  # the block's input, kept on the way
                first = self._stage(next(stages), source, h, w, new_store, keep=kept)
                for s in done_with:
                    s.close()
                second = self._stage(next(stages), norm_relu(first), h, w, new_store)
                first.close()
                source, done_with = residual(kept, second), [kept, second]
            for _ in range(2):  # the upsamplings
                stored = self._stage(next(stages), source, h, w, new_store)
                for s in done_with:
                    s.close()
                source, done_with = norm_relu(stored), [stored]
                h, w = h * 2, w * 2
            final, airlight = next(stages), None
            if self.generator.head is not None:
                decoded = source

                def source(y0: int, y1: int) -> torch.Tensor:
                    x = image(y0, y1)
                    return torch.cat([decoded(y0, y1), self.generator.intensity_priors(x)], dim=1)
                if self.generator.airlight_is_global:
                    airlight = self._image_airlight(final, stored, image, h, w)
            with self.generator.imposing_airlight(airlight):
                self._stage(final, source, h, w, new_store,
                            sink=lambda y0, t: write(y0, y0 + t.shape[-2], 0, width, t))

    def _image_airlight(self, stage: Stage, decoded: Stored, image: Rows, height: int, width: int) -> ImageAirlight:
        """The whole image's airlight terms, found before the output stage composes any band with them: the mean of
        the head's airlight map by a first pass of the head alone over ``decoded`` (the last upsampling's rows,
        kept for the second), and the floor's estimate of the input band by band."""
        g, band = self.generator, self.band_rows(stage, width)
        estimate = floor_estimate(g, image, height, width, band)
        pooled = None
        if g.config.pool_airlight:
            total = torch.zeros((), dtype=torch.float64)
            starts = range(0, height, band)
            self._total += len(starts)
            for y0 in starts:
                self.check_stop()
                y1 = min(y0 + band, height)
                s, e = max(0, y0 - stage.halo), min(height, y1 + stage.halo)
                rows = torch.relu_(decoded.normalised(s, e, self.device, keep=True))
                with self._autocast():
                    maps = g.head(torch.cat([rows, g.intensity_priors(image(s, e))], dim=1)).float()
                total += torch.sigmoid(maps[:, 1:2, y0 - s:y1 - s] + AIRLIGHT_OFFSET).double().sum().cpu()
                self._tick()
            pooled = (total / (height * width)).float().view(1, 1, 1, 1).to(self.device)
        return ImageAirlight(pooled, None if estimate is None else estimate.to(self.device))

    def _tick(self) -> None:
        self._ticks += 1
        if self._progress is not None:
            self._progress(self._ticks, self._total)

    def _stage(self, stage: Stage, source: Rows, height: int, width: int, new_store,
               keep: MemoryStore | FileStore | None = None,
               sink: Callable[[int, torch.Tensor], None] | None = None) -> Stored | None:
        """Run ``stage`` over ``source`` band by band into a new store (or ``sink`` for the output).

        ``keep`` also receives the source's own core rows (a residual block's input, materialised on the way).
        """
        band, scale = self.band_rows(stage, width), stage.scale
        whole = band >= height  # one band: its own statistics are the image's, normalise as the whole pass does
        store, moments = None, Moments()
        for y0 in range(0, height, band):
            self.check_stop()
            y1 = min(y0 + band, height)
            s, e = max(0, y0 - stage.halo), min(height, y1 + stage.halo)
            chunk = source(s, e)
            if keep is not None:
                keep.write(y0, chunk[0, :, y0 - s:y1 - s])
            with self._autocast():
                out = stage.ops(chunk).float()
            core = out[0, :, int((y0 - s) * scale):int((y1 - s) * scale)]
            if sink is not None:
                sink(int(y0 * scale), core[None])
            else:
                if store is None:
                    store = new_store(core.shape[0], int(height * scale), int(width * scale))
                if whole:
                    core = stage.norm(core[None])[0]
                else:
                    moments.add(core)
                store.write(int(y0 * scale), core)
            self._tick()
        if sink is not None:
            return None
        if whole:
            return Stored(store)
        inv_std = torch.rsqrt(moments.m2 / moments.count + stage.norm.eps)  # float64, as merged
        shift = -moments.mean * inv_std
        return Stored(store, *(v.float().view(1, -1, 1, 1).to(self.device) for v in (inv_std, shift)))

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _new_store(self, channels: int, height: int, width: int) -> MemoryStore | FileStore:
        size = channels * height * width * 4
        for place, limit, device in (("device", self.device_memory_bytes, self.device),
                                     ("ram", self.memory_bytes, torch.device("cpu"))):
            if self._in_use[place] + size <= limit:
                self._in_use[place] += size
                return MemoryStore(channels, height, width, lambda n, place=place: self._released(place, n), device)
        return FileStore(channels, height, width, self.scratch_dir)

    def _released(self, place: str, size: int) -> None:
        self._in_use[place] -= size
