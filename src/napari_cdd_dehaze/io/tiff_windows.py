"""Windows of a TIFF image read without decoding the rest: the strips or tiles a window touches, nothing else.

Training folders may hold scenes far larger than memory (ten 10 000² GeoTIFFs are a fine folder). A random crop
needs only the few strips or tiles under it, whatever their compression, and a shrunk overview of the scene can be
built band by band in bounded memory. ``tifffile`` decodes each segment; this module chooses which ones.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .image_files import ImageReadError


class TiffWindows:
    """The first image of a TIFF as (height, width[, samples]), read by windows.

    Works for strips and tiles, chunky and planar samples, any compression ``tifffile`` decodes; a TIFF whose image
    has depth (volumetric tiles) is refused. The file stays open until :meth:`close`; reads are serialised by a lock
    (a file handle has one position), so one reader may serve several threads.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            page = self._tif.pages.first
        except Exception as exc:  # tifffile's own exception types vary with the damage
            raise ImageReadError(f"{self.path}: cannot decode ({type(exc).__name__}: {exc})") from exc
        planes, depth, self.height, self.width, contig = page.shaped
        if depth != 1:
            self._tif.close()
            raise ImageReadError(f"{self.path}: a volumetric TIFF image (depth {depth}) cannot be read by windows")
        self._page, self.dtype = page, np.dtype(page.dtype)
        self.samples = planes * contig
        self._planar = planes > 1
        if page.is_tiled:
            self._seg_h, self._seg_w = page.tilelength, page.tilewidth
        else:
            self._seg_h, self._seg_w = min(page.rowsperstrip or self.height, self.height), self.width
        self._rows_of_segments = -(-self.height // self._seg_h)
        self._cols_of_segments = -(-self.width // self._seg_w)
        self._lock = threading.Lock()
        self._decode_args = {"_fullsize": page.is_tiled}
        if page.compression in (6, 7, 34892, 33007):  # JPEG: tables shared by all segments
            self._decode_args |= {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.height, self.width) if self.samples == 1 else (self.height, self.width, self.samples)

    @property
    def nbytes(self) -> int:
        return self.height * self.width * self.samples * self.dtype.itemsize

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """Pixels [top, top + height) × [left, left + width), in :attr:`shape`'s layout and the stored dtype."""
        if not (0 <= top and 0 <= left and height > 0 and width > 0 and top + height <= self.height
                and left + width <= self.width):
            raise ValueError(f"window {height}×{width} at ({top}, {left}) lies outside the "
                             f"{self.height}×{self.width} image of {self.path}")
        out = np.zeros((height, width, self.samples), self.dtype)
        bottom, right = top + height, left + width
        planes = range(self.samples) if self._planar else range(1)
        for plane in planes:
            for row in range(top // self._seg_h, (bottom - 1) // self._seg_h + 1):
                for col in range(left // self._seg_w, (right - 1) // self._seg_w + 1):
                    index = (plane * self._rows_of_segments + row) * self._cols_of_segments + col
                    segment = self._segment(index)
                    y0, x0 = row * self._seg_h, col * self._seg_w
                    ys, xs = max(top, y0), max(left, x0)
                    ye = min(bottom, y0 + self._seg_h, self.height)
                    xe = min(right, x0 + self._seg_w, self.width)
                    if segment is None:  # an empty segment: the image's fill value, zeros
                        continue
                    values = segment[0, ys - y0:ye - y0, xs - x0:xe - x0]
                    channels = slice(plane, plane + 1) if self._planar else slice(None)
                    out[ys - top:ye - top, xs - left:xe - left, channels] = values
        return out[..., 0] if self.samples == 1 else out

    def _segment(self, index: int) -> np.ndarray | None:
        page = self._page
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if not count:
            return None
        with self._lock:
            handle = self._tif.filehandle
            handle.seek(offset)
            data = handle.read(count)
        try:
            segment, _, shape = page.decode(data, index, **self._decode_args)
        except Exception as exc:
            raise ImageReadError(f"{self.path}: segment {index} cannot be decoded ({type(exc).__name__}: {exc})") \
                from exc
        return None if segment is None else np.asarray(segment).reshape(shape)

    def overview(self, factor: int, max_elements: int = 1 << 24) -> np.ndarray:
        """The image shrunk ``factor`` times by block means (float32), read in bands of rows of bounded size.

        Edge rows and columns that do not fill a block are left out, as a block average of a resize would.
        """
        factor = max(1, int(factor))
        out_h, out_w = self.height // factor, self.width // factor
        if out_h == 0 or out_w == 0:
            raise ValueError(f"{self.path}: {self.height}×{self.width} cannot shrink {factor} times")
        band = max(1, max_elements // max(1, self.width * self.samples * factor)) * factor
        rows = []
        for top in range(0, out_h * factor, band):
            height = min(band, out_h * factor - top)
            values = self.read(top, 0, height, out_w * factor).astype(np.float32)
            blocks = values.reshape(height // factor, factor, out_w, factor, *values.shape[2:])
            rows.append(blocks.mean(axis=(1, 3)))
        return np.concatenate(rows, axis=0)

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> TiffWindows:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
