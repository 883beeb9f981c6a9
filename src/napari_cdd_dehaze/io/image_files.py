"""Reading and writing image files, and the reversible map between a file's intensities and [0, 1].

PNG goes through imagecodecs (Pillow truncates 16-bit colour PNGs to 8 bits), JPEG through Pillow (with
the EXIF orientation applied), TIFF through tifffile (multi-page files come back as stacks).
"""
from __future__ import annotations

import contextlib
import functools
import io as _io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ImageReadError(ValueError):
    """A file that is not a readable image (wrong format, truncated, unsupported layout)."""


def read_image(path: str | os.PathLike, memory_map: bool = False) -> np.ndarray:
    """Read a PNG, JPEG or TIFF as stored: (H, W), (H, W, C) or, for multi-page TIFF, (N, H, W[, C]).

    With ``memory_map``, an uncompressed TIFF is mapped instead of read, so that an image larger than
    memory can be processed window by window (compressed TIFFs and other formats are read as usual).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageReadError(f"{path}: unsupported file type {suffix!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile
            array = None
            if memory_map:
                try:
                    array = tifffile.memmap(path, mode="r")
                except ValueError:  # compressed or not contiguous: cannot be mapped
                    array = None
            if array is None:
                array = tifffile.imread(path)
        elif suffix == ".png":
            import imagecodecs
            array = imagecodecs.png_decode(path.read_bytes())
        else:
            from PIL import Image, ImageOps
            with Image.open(path) as im:
                array = np.asarray(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise
    except Exception as exc:  # every decoder has its own exception types
        raise ImageReadError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from exc
    if not isinstance(array, np.memmap):
        array = np.asarray(array)
    if array.ndim < 2 or array.size == 0:
        raise ImageReadError(f"{path}: decoded to an empty or 1-D array of shape {array.shape}")
    return array


# TIFF tags that place an image on the map or say what its values mean: GeoTIFF's model scale, tie points and
# transformation, its key directory and parameters, and GDAL's metadata and nodata value. A restored image keeps them.
GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)
GEOREFERENCING_TAGS = (33550, 33922, 34264, 34735)  # pixel scale, tie points, transformation, GeoKeys: on a map


def kept_tiff_tags(path: str | os.PathLike) -> list[tuple]:
    """The :data:`GEOTIFF_TAGS` of a TIFF's first page, and an OME-TIFF's OME-XML (axes, physical sizes, channel
    names and the rest; a new UUID), as ``tifffile`` ``extratags`` to write them back; none for other files."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return []
    import re
    import uuid

    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        kept = [(tag.code, tag.dtype, tag.count, tag.value, True) for tag in tags.values() if tag.code in GEOTIFF_TAGS]
        if tif.is_ome and tif.ome_metadata:
            ome = re.sub(r'UUID="urn:uuid:[^"]*"', f'UUID="urn:uuid:{uuid.uuid1()}"', tif.ome_metadata, count=1)
            kept.append((OME_DESCRIPTION, "s", 0, ome, True))
        return kept


OME_DESCRIPTION = 270  # ImageDescription, where an OME-TIFF keeps its OME-XML


def _tiff_options(extratags: list[tuple]) -> dict:
    """tifffile's write options for ``extratags``: with an OME-XML description, none of tifffile's own."""
    tags = list(extratags)
    return {"extratags": tags, **({"metadata": None} if any(t[0] == OME_DESCRIPTION for t in tags) else {})}


def declared_nodata(tags: list[tuple]) -> float | None:
    """The nodata value that :func:`kept_tiff_tags` found declared (GDAL's tag 42113: a number, or "nan"), or None."""
    for code, _, _, value, _ in tags:
        if code == 42113:
            try:
                return float(str(value).strip().strip("\x00"))
            except ValueError:
                return None
    return None


def declared_channels(path: str | os.PathLike, shape: tuple[int, ...]) -> str:
    """What a file read as ``shape`` says of its channels, from one look at its header: "alpha" when the last of 2 or
    4 channels is alpha (a PNG of grey+alpha or RGBA; a TIFF whose ExtraSamples tag says associated or unassociated
    alpha: an unspecified extra sample is a band, e.g. NIR), "planar rgb" when a TIFF read as (3 or 4, Y, X) is
    photometric RGB stored band by band (colour, not three grey planes), else ""."""
    suffix = Path(path).suffix.lower()
    last = len(shape) >= 3 and shape[-1] in (2, 4)
    first = len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4)
    if suffix == ".png":
        return "alpha" if last else ""
    if suffix not in (".tif", ".tiff") or not (last or first):
        return ""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if last and any(int(kind) in (1, 2) for kind in page.extrasamples):
            return "alpha"
        if first and int(page.photometric) == 2 and int(page.planarconfig) == 2:  # RGB, separate planes
            return "planar rgb"
    return ""


def write_image(path: str | os.PathLike, array: np.ndarray, extratags: list[tuple] = ()) -> None:
    """Write ``array`` in the format named by the suffix; the file appears atomically (temp + rename).

    ``extratags`` (TIFF only): tags to write as they are, e.g. :func:`kept_tiff_tags` of the input."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile
        buffer = _io.BytesIO()
        tifffile.imwrite(buffer, array, photometric="rgb" if array.ndim >= 3 and array.shape[-1] in (3, 4) else None,
                         **_tiff_options(extratags))
        data = buffer.getvalue()
    elif suffix == ".png":
        import imagecodecs
        data = imagecodecs.png_encode(np.ascontiguousarray(array))
    elif suffix in (".jpg", ".jpeg"):
        from PIL import Image
        if array.dtype != np.uint8:
            raise ValueError(f"{path}: JPEG holds 8-bit images only, got {array.dtype}; write PNG or TIFF instead")
        buffer = _io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
        data = buffer.getvalue()
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")
    atomic_write_bytes(path, data)


@contextlib.contextmanager
def mapped_tiff_output(path: Path, like: np.ndarray, extratags: list[tuple] = ()):
    """A memory-mapped, uncompressed TIFF shaped like ``like`` to write into; it appears at ``path`` on success.
    ``extratags``: as for :func:`write_image`.

    Written under a temporary name and renamed, so a failure leaves no half-written file at ``path``.
    """
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.tif")
    photometric = "rgb" if like.ndim >= 3 and like.shape[-1] in (3, 4) else "minisblack"
    try:
        out = tifffile.memmap(tmp, shape=like.shape, dtype=like.dtype, photometric=photometric,
                              **_tiff_options(extratags))
        yield out
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def release_pages(*arrays: np.ndarray) -> None:
    """Let go of the resident pages of memory-mapped arrays (a no-op for others, and where ``madvise`` is missing).

    Pages of a mapped file count in the process's RSS while they stay mapped in it, so restoring a file larger
    than memory window by window would fill the RSS with the whole file. Dropping them from the mapping loses
    nothing: clean pages are read again when needed, and written pages stay in the kernel's cache until they are
    written to the file.
    """
    import mmap

    advice = getattr(mmap, "MADV_DONTNEED", None)
    for array in arrays:
        mapping = getattr(array, "_mmap", None)  # numpy keeps the mmap of a memmap (and of its views) here
        if advice is not None and isinstance(mapping, mmap.mmap) and not mapping.closed:
            try:
                mapping.madvise(advice)
            except (OSError, ValueError):
                return


@functools.cache
def return_freed_memory(threshold: int = 4 << 20) -> None:
    """Have glibc's allocator hand every allocation of ``threshold`` bytes or more straight back to the system when
    it is freed (a no-op elsewhere). By default glibc raises that threshold to the size of the large arrays it has
    freed (up to 32 MB), then serves arrays below it from a heap that it rarely gives back: restoring a 16384² scene
    window by window then peaked at 0.8 GB in one run and 3.4 GB in the next. With 4 MB fixed, every run peaked at
    0.8 GB, in the same time (docs/benchmarks.md)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD; fixing it ends the dynamic raise
    except (OSError, AttributeError):
        pass


def copy_rows(source: np.ndarray, sink: np.ndarray, rows: int = 1024) -> None:
    """``sink[...] = source`` a block of rows at a time, letting go of mapped pages after each block: a strip of
    columns of a memory-mapped file touches a page of every row (and the kernel maps the pages around each)."""
    for y in range(0, source.shape[0], rows):
        sink[y:y + rows] = source[y:y + rows]
        release_pages(source, sink)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class IntensityMap:
    """Reversible map between stored intensities and [0, 1].

    Integers use their dtype's full range (uint8 /255, uint16 /65535), so a round trip is exact up to
    rounding. Floats already within [0, 1] are kept; other floats are scaled by their robust range
    (the ``low``/``high`` percentiles) and mapped back to that range afterwards.
    """

    dtype: np.dtype
    low: float
    high: float

    @classmethod
    def for_array(cls, array: np.ndarray, percentiles: tuple[float, float] = (0.1, 99.9),
                  nodata: float | None = None) -> "IntensityMap":
        """The map for ``array``; values equal to ``nodata`` (NaN: NaNs) are left out of a float image's range."""
        dtype = np.dtype(array.dtype)
        if dtype == np.bool_:
            return cls(dtype, 0.0, 1.0)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return cls(dtype, float(max(info.min, 0)), float(info.max))
        def data(values: np.ndarray) -> np.ndarray:
            if nodata is None:
                return values.reshape(-1)
            return values[~np.isnan(values)] if np.isnan(nodata) else values[values != nodata]

        lo, hi = np.inf, -np.inf
        for chunk in _chunks(array):  # bounded memory for memory-mapped images
            chunk = data(np.asarray(chunk))
            if not np.all(np.isfinite(chunk)):
                raise ValueError("image contains NaN or infinite values; replace them before restoring "
                                 "(or give them as nodata)")
            if chunk.size:
                lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
        if (lo >= 0.0 and hi <= 1.0) or lo > hi:  # within [0, 1], or nothing but nodata
            return cls(dtype, 0.0, 1.0)
        flat = array.reshape(-1)
        sample = data(flat[:: max(1, flat.size // (1 << 22))])  # ≤ ~4 M values estimate the percentiles
        lo, hi = (float(v) for v in np.percentile(sample, percentiles))
        if hi <= lo:
            hi = lo + 1.0
        return cls(dtype, lo, hi)

    def to_unit(self, array: np.ndarray) -> np.ndarray:
        unit = (array.astype(np.float32) - self.low) / (self.high - self.low)
        return np.clip(unit, 0.0, 1.0)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        values = np.clip(unit, 0.0, 1.0) * (self.high - self.low) + self.low
        if np.issubdtype(self.dtype, np.integer) or self.dtype == np.bool_:
            return np.rint(values).astype(self.dtype)
        return values.astype(self.dtype)


def _chunks(array: np.ndarray, max_elements: int = 1 << 24):
    """Slices of ``array`` along its first axis, each at most ~``max_elements`` (at least one row)."""
    if array.ndim == 0 or array.size <= max_elements:
        yield array
        return
    rows = max(1, max_elements // (array.size // array.shape[0]))
    for start in range(0, array.shape[0], rows):
        yield array[start:start + rows]


def to_channels(unit: np.ndarray, channels: int) -> np.ndarray:
    """(H, W[, C]) in [0, 1] → (channels, H, W): grey is repeated, alpha dropped, RGB→grey by luminance."""
    if unit.ndim == 2:
        unit = unit[..., None]
    if unit.ndim != 3:
        raise ValueError(f"expected a 2-D image (H, W) or (H, W, C), got shape {unit.shape}")
    c = unit.shape[-1]
    if c in (2, 4):  # grey+alpha, RGB+alpha
        unit, c = unit[..., :c - 1], c - 1
    if c == channels:
        out = unit
    elif c == 1:
        out = np.repeat(unit, channels, axis=-1)
    elif c == 3 and channels == 1:
        out = unit @ np.array([[0.2126], [0.7152], [0.0722]], dtype=unit.dtype)
    else:
        raise ValueError(f"cannot feed a {c}-channel image to a {channels}-channel model")
    return np.ascontiguousarray(out.transpose(2, 0, 1))
