"""Nodata: pixels a file marks as holding no data take no part in the restoration and are written back as they were.

A satellite scene often lies in a frame of nodata (0, or NaN, in every band). Fed to the network, the frame would
enter every statistic the restorer uses (the norm layers', the pooled airlight, the working-scale copy), so the
restored scene would depend on how wide its frame is. Here only the bounding box of the valid pixels is restored:
for a frame that is exactly the scene alone, so its restored pixels do not depend on the frame. Nodata pixels inside
that box (an irregular footprint) are filled with the valid pixels' mean before the restoration, in a copy of the box,
and written back as nodata after it.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from napari_cdd_dehaze.io.image_files import copy_rows, release_pages

ROWS_PER_READ = 1024  # the mask is found a block of rows at a time (memory-mapped planes)


def valid_mask(plane: np.ndarray, nodata: float, channels: bool) -> np.ndarray:
    """(H, W) True where ``plane`` holds data: not every channel equal to ``nodata`` (NaN: no channel NaN)."""
    blocks = []
    for start in range(0, plane.shape[0], ROWS_PER_READ):
        block = np.asarray(plane[start:start + ROWS_PER_READ])
        if isinstance(nodata, float) and math.isnan(nodata):
            invalid = np.isnan(block).any(axis=-1) if channels else np.isnan(block)
        else:
            invalid = (block == nodata).all(axis=-1) if channels else block == nodata
        blocks.append(~invalid)
        release_pages(plane)  # a memory-mapped plane: its pages need not stay in the RSS
    return np.concatenate(blocks)


def restore_valid(plane: np.ndarray, out: np.ndarray, valid: np.ndarray,
                  restore: Callable[[np.ndarray, np.ndarray], None]) -> None:
    """``restore(source, sink)`` on the bounding box of the ``valid`` pixels of ``plane``; everything else of ``out``
    is ``plane``'s nodata, copied."""
    if valid.all():
        restore(plane, out)
        return
    if not valid.any():
        out[...] = plane
        return
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    for outside in (np.s_[:r0], np.s_[r1:], np.s_[r0:r1, :c0], np.s_[r0:r1, c1:]):  # the frame: nodata only
        copy_rows(plane[outside], out[outside])
    inner = valid[r0:r1, c0:c1]
    if inner.all():  # a rectangle of data: restored where it lies, window by window
        restore(plane[r0:r1, c0:c1], out[r0:r1, c0:c1])
        return
    box = np.array(plane[r0:r1, c0:c1])
    holes = ~inner
    box[holes] = box[inner].astype(np.float64).mean(axis=0).astype(box.dtype)  # neutral for every statistic
    restored = np.empty_like(box)
    restore(box, restored)
    restored[holes] = plane[r0:r1, c0:c1][holes]
    out[r0:r1, c0:c1] = restored
