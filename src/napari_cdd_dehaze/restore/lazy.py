"""Restoring an array that is not in memory (a dask or zarr array, a napari layer read lazily) plane by plane.

Only one plane is read at a time, and the result goes into a memory-mapped temporary file that nothing outlives
(on POSIX it has no name; elsewhere it goes when closed), whose pages the engine lets go of as it writes. So a
stack larger than memory restores in the memory of one plane, and the result can back a napari layer.
"""
from __future__ import annotations

import dataclasses
import tempfile

import numpy as np

from napari_cdd_dehaze.io.image_files import IntensityMap, release_pages

from .engine import RestoreOptions, Restorer, plane_ndim, restore_array
from .windows import Cancelled


def stack_intensity(data, planes: list[tuple], samples: int = 8, side: int = 512) -> IntensityMap:
    """One intensity map for every plane: an integer dtype's range, or a float stack's robust range from a few
    planes read at a coarse stride (so that all planes are mapped alike, as ``restore_array`` maps a stack)."""
    if np.issubdtype(np.dtype(data.dtype), np.integer):
        return IntensityMap.for_array(np.zeros(1, data.dtype))
    chosen = planes[:: max(1, len(planes) // samples)]
    plane_shape = tuple(data.shape)[len(planes[0]):]  # (H, W) or (H, W, C)
    stride = max(1, max(plane_shape[:2]) // side)
    return IntensityMap.for_array(np.stack([np.asarray(data[index][::stride, ::stride]) for index in chosen]))


def restore_out_of_core(restorer: Restorer, data, options: RestoreOptions | None = None,
                        channel_axis: int | None | str = "auto", scratch_dir: str | None = None, out=None):
    """``restore_array`` of an array-like ``data`` (``shape``, ``dtype``, indexing), read one plane at a time, into
    ``out`` (an array-like of the same shape and dtype that takes ``out[index] = plane``: a zarr array on disk) or
    by default a temporary memory-mapped array; ``channel_axis`` -1 or "auto" (last) or None. Returns ``out``."""
    options = options or RestoreOptions()
    shape = tuple(data.shape)
    dims = plane_ndim(shape, channel_axis)
    planes = list(np.ndindex(shape[:len(shape) - dims]))
    if out is None:
        file = tempfile.TemporaryFile(prefix="cdd-restored-", dir=scratch_dir)
        out = np.memmap(file, dtype=data.dtype, mode="w+", shape=shape)
        out.scratch_file = file  # open as long as the array lives (Windows deletes a temporary file when closed)
    elif tuple(out.shape) != shape or np.dtype(out.dtype) != np.dtype(data.dtype):
        raise ValueError(f"out must have the input's shape {shape} and dtype {data.dtype}, got {out.shape} "
                         f"{out.dtype}")
    imap, report = stack_intensity(data, planes), options.progress
    for i, index in enumerate(planes):
        if options.should_stop is not None and options.should_stop():
            raise Cancelled("restoration cancelled")
        step = (lambda done, total, i=i: report(i * total + done, len(planes) * total)) if report else None
        plane = np.asarray(data[index])
        sink = out[index] if isinstance(out, np.ndarray) else None  # a memory map: written in place, no copy
        restored = restore_array(restorer, plane, dataclasses.replace(options, progress=step),
                                 channel_axis=-1 if dims == 3 else None, intensity=imap, out=sink)
        if sink is None:  # a zarr array or the like: takes the plane whole
            out[index] = restored
        del plane, restored
        release_pages(out)
    return out
