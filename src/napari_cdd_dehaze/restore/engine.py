"""Restoration of arrays of any size, layout and dtype with a trained restorer.

* **Layouts**: a 2-D image (H, W); a colour image (H, W, C) with C ≤ 4, alpha (the 2nd or 4th channel)
  passed through; any leading axes (Z, T, …) are a stack restored plane by plane. A stack is never taken for
  colour: pass ``channel_axis=None`` for an (…, H, W) stack whose last axis happens to be ≤ 4 long, or the
  axis that holds colour when it is not last.
* **Channels**: an image with as many colour channels as the model is restored as it is; otherwise (grey
  into an RGB model, RGB or multichannel into a grey model) each channel is restored alone as grey.
* **Dtypes and range**: values are mapped to [0, 1] by :class:`~napari_cdd_dehaze.io.image_files.IntensityMap`
  — integers by their dtype's range, floats within [0, 1] as they are, other floats by their robust
  (0.1–99.9 percentile) range — and mapped back, so the output has the input's dtype and scale. One map
  serves a whole stack, so planes stay comparable. NaN or infinite input is an error.
* **Size**: images are padded to a multiple of 4 (reflection; replication for tiny ones) and run whole, or
  beyond ``whole_max_pixels`` streamed layer by layer over row bands with exact statistics
  (:mod:`~napari_cdd_dehaze.restore.streamed`), or in tiles when a tile size is given
  (:mod:`~napari_cdd_dehaze.restore.tiles`); bands and tiles are read from and written to the arrays window by
  window, so memory stays bounded by the band or tile, not the image. A dehazing restorer with a working scale
  (``estimate_size``, e.g. the bundled model) estimates the haze on a shrunk copy instead and composes the
  output at full size band by band (:mod:`~napari_cdd_dehaze.restore.working_scale`).
* **Classical dehazers** (:class:`~napari_cdd_dehaze.restore.classical.ClassicalDehazer`) share all of the above except
  tiling: their airlight is a global estimate, so each plane runs whole (in memory), progress counts planes
  and ``should_stop`` is honoured between planes. A grey channel is given to them as grey.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_cdd_dehaze.gan.networks import MIN_ESTIMATE_SIZE, MIN_SIDE, ResnetGenerator
from napari_cdd_dehaze.imaging.devices import native_bf16, pick_device
from napari_cdd_dehaze.io.image_files import IntensityMap, copy_rows, release_pages, return_freed_memory

from .classical import ClassicalDehazer
from .dispatch import Dispatcher
from .nodata import restore_valid, valid_mask
from .windows import Cancelled


@dataclass
class RestoreOptions:
    """How to run: ``tile`` 0 = whole image; ``None`` = whole up to ``whole_max_pixels``, streamed layer by layer
    beyond (exact, bounded memory; :mod:`~napari_cdd_dehaze.restore.streamed`); a number = overlapping tiles of
    that size.

    Streaming keeps intermediate layers in a GPU's memory up to ``stream_device_bytes`` (``None``: half of
    what is free on a CUDA device when the run starts; 0 elsewhere), then up to ``stream_memory_bytes`` in RAM,
    and puts the rest in (deleted, temporary) files in ``scratch_dir``, by default the system's temporary
    folder: at its peak it needs about 6 × (the network's width) bytes per pixel of free disk (≈ 13 GB at
    8192² for width 32) less what the GPU and RAM hold. ``stream_band_elements`` bounds one band's input.

    ``estimate_size``: a dehazing restorer estimates transmission and airlight on a copy of a larger image
    shrunk to this long side and composes the output at full size (:mod:`~napari_cdd_dehaze.restore.working_scale`);
    ``None`` takes the model's own (stored with its weights; 0 if none), 0 estimates at full resolution.
    ``airlight_floor``: a dehazing restorer with a working scale composes with at least He et al.'s airlight
    (dark channel over this odd window; :func:`~napari_cdd_dehaze.gan.networks.floor_airlight`); ``None``
    takes the model's own setting, 0 turns it off. Classical methods ignore both.
    """

    device: str | torch.device = "auto"
    tile: int | None = None
    margin: int | None = None
    whole_max_pixels: int = 2048 * 2048
    stats_max_pixels: int = 2048 * 2048     # exact norm statistics from one whole pass up to this size …
    approx_stats_pixels: int = 2048 * 2048  # … beyond, estimated on a copy reduced to this size (see tiling)
    stream_memory_bytes: int = 1 << 29
    stream_device_bytes: int | None = None
    stream_band_elements: int = 1 << 24   # one band's input (channels × rows × width): 64 MB of float32
    scratch_dir: str | None = None
    estimate_size: int | None = None
    airlight_floor: int | None = None
    # "auto": bf16 where it is exact enough and fast (resolve_precision), else fp32; or "fp32", "bf16" (autocast;
    # pays off on GPUs and bf16-capable CPUs), "fp16" (GPU only)
    precision: str = "auto"
    progress: Callable[[int, int], None] | None = None   # (units done, total) over the whole array
    should_stop: Callable[[], bool] | None = None


def plane_ndim(shape: tuple[int, ...], channel_axis: int | None | str = "auto") -> int:
    """Trailing dimensions that form one image: 3 when the last axis holds channels, else 2.

    ``"auto"``: the last axis is colour when it is at most 4 long; ``None``: no channel axis; ``-1``
    (after moving an explicit axis last): the last axis holds channels, however many.
    """
    if channel_axis is None:
        return 2
    if channel_axis == "auto":
        return 3 if len(shape) >= 3 and shape[-1] <= 4 else 2
    return 3


Restorer = ResnetGenerator | ClassicalDehazer


def restore_array(restorer: Restorer, array: np.ndarray, options: RestoreOptions | None = None,
                  channel_axis: int | None | str = "auto", out: np.ndarray | None = None,
                  bands: Sequence[int] | None = None, nodata: float | None = None,
                  intensity: IntensityMap | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """Restore a 2-D image, a colour image or a stack of them; same shape and dtype out.

    ``out`` (e.g. a memory-mapped file) receives the result when given. ``bands`` (indices along the channel
    axis, as many as the model takes, e.g. ``(3, 2, 1)`` for the red, green and blue of a blue/green/red/NIR
    scene): the model sees those bands in that order, and every other band is copied unchanged. ``nodata`` (a
    value, or NaN): pixels with that value in every channel take no part and are written back as they were
    (:mod:`~napari_cdd_dehaze.restore.nodata`). ``valid``: the same for the pixels a mask marks False (a file's
    mask band, alpha 0), one (H, W) mask for every plane or one per plane (the planes' leading shape first).
    ``intensity``: the map between the array's values and [0, 1], when the caller has one for a larger whole (the
    planes of a stack read one by one); by default the array's own.
    """
    options = options or RestoreOptions()
    if array.ndim < 2:
        raise ValueError(f"expected an image, got an array of shape {array.shape}")
    if bands is not None and channel_axis in (None, "auto"):
        channel_axis = -1  # bands name channels: the last axis holds them unless said otherwise
    if channel_axis not in (None, "auto", -1, array.ndim - 1):
        moved_out = None if out is None else np.moveaxis(out, channel_axis, -1)
        moved = restore_array(restorer, np.moveaxis(array, channel_axis, -1), options, channel_axis=-1,
                              out=moved_out, bands=bands, nodata=nodata, intensity=intensity, valid=valid)
        return np.moveaxis(moved, -1, channel_axis)
    if bands is not None:
        channels = restorer.channels if isinstance(restorer, ClassicalDehazer) else restorer.config.channels
        bands = _checked_bands(bands, array.shape[-1], channels)
    imap = intensity or IntensityMap.for_array(array, nodata=nodata)
    out = np.empty_like(array) if out is None else out
    dims = plane_ndim(array.shape, channel_axis)
    planes = list(np.ndindex(array.shape[:array.ndim - dims]))

    if valid is not None and tuple(valid.shape[-2:]) != tuple(array.shape[array.ndim - dims:][:2]):
        raise ValueError(f"a valid-pixel mask of shape {valid.shape} does not fit an image of shape {array.shape}")

    def each_plane(index, restore: Callable[[np.ndarray, np.ndarray], None]) -> None:
        if nodata is None and valid is None:
            return restore(array[index], out[index])
        mask = None if valid is None else np.asarray(valid[index] if valid.ndim > 2 else valid, bool)
        if nodata is not None:
            found = valid_mask(array[index], nodata, dims == 3)
            mask = found if mask is None else mask & found
        restore_valid(array[index], out[index], mask, restore)

    alpha = channel_axis == "auto"
    if isinstance(restorer, ClassicalDehazer):
        for i, index in enumerate(planes):
            if options.should_stop is not None and options.should_stop():
                raise Cancelled("restoration cancelled")
            each_plane(index, lambda source, sink: restore_plane_whole(restorer, source, imap, sink, alpha, bands))
            if options.progress:
                options.progress(i + 1, len(planes))
        return out
    runner = _runner(restorer, options)
    for i, index in enumerate(planes):
        step = (lambda done, total, i=i: options.progress(i * total + done, len(planes) * total)) \
            if options.progress else None
        each_plane(index, lambda source, sink, step=step: restore_plane(runner, source, imap, sink, step, alpha,
                                                                         bands))
    return out


def _checked_bands(bands: Sequence[int], count: int, channels: int) -> list[int]:
    bands = [int(b) for b in bands]
    if len(bands) != channels or len(set(bands)) != len(bands) or not all(0 <= b < count for b in bands):
        raise ValueError(f"bands must be {channels} different bands among the image's {count} "
                         f"(0 to {count - 1}), got {bands}")
    return bands


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *AUTOCAST)


def resolve_precision(requested: str, restorer: ResnetGenerator, device: torch.device, size: int) -> str:
    """The precision a run uses: ``requested``, or for "auto" bf16 where the device computes it natively
    (:func:`~napari_cdd_dehaze.imaging.devices.native_bf16`) and the run is a dehazing restorer at its working scale
    (``size`` > 0), where bf16 moves the output by at most 1/255 (tests/test_shipped_model.py); fp32 elsewhere:
    at full resolution bf16 moved it by up to 3.6/255 (docs/benchmarks.md)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    return "bf16" if size and restorer.config.output == "dehaze" and native_bf16(device) else "fp32"


def _runner(restorer: ResnetGenerator, options: RestoreOptions) -> Dispatcher:
    return_freed_memory()  # windows of large images come and go: their memory goes back to the system
    restorer = with_airlight_floor(restorer, options.airlight_floor)
    device = pick_device(options.device)
    size = estimate_size(restorer, options.estimate_size)
    precision = resolve_precision(options.precision, restorer, device, size)
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 autocast is for GPUs; use fp32 or bf16 on the CPU")
    return Dispatcher(restorer, device, tile=options.tile, margin=options.margin,
                       whole_max_pixels=options.whole_max_pixels, stats_max_pixels=options.stats_max_pixels,
                       approx_stats_pixels=options.approx_stats_pixels,
                       stream_memory_bytes=options.stream_memory_bytes, scratch_dir=options.scratch_dir,
                       band_elements=options.stream_band_elements,
                       stream_device_bytes=stream_device_bytes(device, options.stream_device_bytes),
                       autocast_dtype=AUTOCAST[precision], should_stop=options.should_stop, estimate_size=size)


def with_airlight_floor(restorer: ResnetGenerator, requested: int | None) -> ResnetGenerator:
    """``restorer`` itself, or (when ``requested`` differs from its own ``airlight_floor``) a copy of it with that
    floor; the configuration's checks give the message for a value it cannot take."""
    if requested is None or requested == restorer.config.airlight_floor:
        return restorer
    copy = ResnetGenerator(dataclasses.replace(restorer.config, airlight_floor=requested))
    copy.load_state_dict(restorer.state_dict())
    return copy.to(next(restorer.parameters()).device).eval()


def estimate_size(restorer: ResnetGenerator, requested: int | None) -> int:
    """The working scale of a run: ``requested``, or the restorer's own; checked against its output."""
    size = restorer.config.estimate_size if requested is None else requested
    if size and restorer.config.output != "dehaze":
        raise ValueError(f"estimate_size is for dehazing models (scattering output); this model's output is "
                         f"{restorer.config.output!r}: use 0")
    if 0 < size < MIN_ESTIMATE_SIZE:
        raise ValueError(f"estimate_size must be 0 or at least {MIN_ESTIMATE_SIZE}, got {size}")
    return size


def stream_device_bytes(device: torch.device, requested: int | None) -> int:
    """How much of a streamed run's layers may stay on ``device``: ``requested``, or half its free memory."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return free // 2


def restore_plane(runner: Dispatcher, plane: np.ndarray, imap: IntensityMap, out: np.ndarray,
                  progress: Callable[[int, int], None] | None = None, alpha: bool = True,
                  bands: list[int] | None = None) -> None:
    """Restore one (H, W) or (H, W, C) plane into ``out`` (same shape and dtype).

    With ``alpha``, the last of 2 or 4 channels is alpha and is copied, not restored; with ``bands``, those are
    restored together and the others copied.
    """
    channels = runner.generator.config.channels
    colour, sink, jobs = _channel_jobs(plane, out, channels, alpha, bands)
    for j, job in enumerate(jobs):
        step = (lambda done, total, j=j: progress(j * total + done, len(jobs) * total)) if progress else None
        _run_channels(runner, colour, sink, job, imap, channels, step)


def _channel_jobs(plane: np.ndarray, out: np.ndarray, channels: int, alpha: bool,
                  bands: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """(H, W, C) views of ``plane`` and ``out`` and the channel groups to restore; what is not restored (alpha,
    the bands not chosen) is copied here.

    ``bands`` form the one group when given; otherwise all colour channels form one group when there are as
    many as the model takes, or each is restored alone as grey.
    """
    colour = plane[..., None] if plane.ndim == 2 else plane
    sink = out[..., None] if out.ndim == 2 else out
    n = colour.shape[-1]
    if bands is not None:
        for c in sorted(set(range(n)) - set(bands)):
            _copy_channel(colour, sink, c)
        return colour, sink, [bands]
    if alpha and n in (2, 4):  # grey+alpha or RGBA: alpha passes through
        _copy_channel(colour, sink, n - 1)
        n -= 1
    return colour, sink, [list(range(n))] if n == channels else [[c] for c in range(n)]


def _copy_channel(source: np.ndarray, sink: np.ndarray, channel: int) -> None:
    """One channel copied unchanged, a block of rows at a time (:func:`~napari_cdd_dehaze.io.image_files.copy_rows`)."""
    copy_rows(source[..., channel], sink[..., channel])


def restore_plane_whole(dehazer: ClassicalDehazer, plane: np.ndarray, imap: IntensityMap, out: np.ndarray,
                        alpha: bool = True, bands: list[int] | None = None) -> None:
    """Restore one (H, W) or (H, W, C) plane with a classical dehazer, whole, into ``out``."""
    colour, sink, jobs = _channel_jobs(plane, out, dehazer.channels, alpha, bands)
    for job in jobs:
        sink[..., job] = imap.from_unit(dehazer(imap.to_unit(colour[..., job])))


def _run_channels(runner: Dispatcher, source: np.ndarray, sink: np.ndarray, job: list[int], imap: IntensityMap,
                  channels: int, progress) -> None:
    h, w = source.shape[:2]
    ph, pw = max(-(-h // 4) * 4, MIN_SIDE), max(-(-w // 4) * 4, MIN_SIDE)

    def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        # windows may reach into the padding below/right of the image: read what exists, pad the rest
        window = imap.to_unit(source[y0:min(y1, h), x0:min(x1, w)][..., job])
        release_pages(source)  # a memory-mapped file: its pages need not stay in the RSS (io.image_files)
        x = torch.from_numpy(np.ascontiguousarray(window.transpose(2, 0, 1)))[None] * 2 - 1
        if x.shape[1] != channels:
            x = x.expand(-1, channels, -1, -1)
        pad_h, pad_w = y1 - y0 - x.shape[-2], x1 - x0 - x.shape[-1]
        if pad_h or pad_w:
            mode = "reflect" if x.shape[-2] > pad_h and x.shape[-1] > pad_w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return x

    def write(y0: int, y1: int, x0: int, x1: int, y: torch.Tensor) -> None:
        y1, x1 = min(y1, h), min(x1, w)
        if y1 <= y0 or x1 <= x0:
            return
        unit = ((y[0, :, : y1 - y0, : x1 - x0].cpu().numpy().transpose(1, 2, 0) + 1) / 2)
        if len(job) != channels:
            unit = unit.mean(axis=-1, keepdims=True)
        sink[y0:y1, x0:x1, job] = imap.from_unit(unit)
        release_pages(sink)

    runner.run(read, write, ph, pw, progress)
