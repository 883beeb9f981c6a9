"""GeoTIFFs through rasterio (the optional ``[geo]`` extra): the restored file is a GeoTIFF like the input.

What is kept: CRS, transform, nodata, the dataset mask, dtype, band count and order, band descriptions, colour
interpretation, scales, offsets, units, the dataset's and each band's metadata, the block layout (tiled or striped),
compression, predictor, interleaving, and overviews at the input's levels (rebuilt from the restored pixels).

How it streams: the input is decoded by row strips into an uncompressed (Y, X, bands) scratch file, the exact
streaming engine restores that into a second scratch file window by window, and the result is encoded strip by strip
into the output. Memory stays bounded by the engine's working memory and one strip; the scratch files (two times the
raster's uncompressed size) go to the user's temporary folder, or ``RestoreOptions.scratch_dir``, and are removed
afterwards, on error and on cancel. The output appears under its name only when it is complete.

Without rasterio, :func:`napari_cdd_dehaze.restore.files.restore_file` still writes a GeoTIFF with the input's
GeoTIFF tags copied verbatim (uncompressed, no overviews).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_cdd_dehaze.io.image_files import IntensityMap, copy_rows, release_pages

from .engine import RestoreOptions, restore_array

GEO_EXTRA = 'pip install "napari-cdd-dehaze[geo]"'
STRIP_BYTES = 1 << 26  # rows decoded or encoded at once: about 64 MB of pixels
GDAL_CACHE_MB = 64     # GDAL's block cache while a file streams through (its default: 5 % of the RAM)


def rasterio_available() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def declared_roles(colorinterp: Sequence[str], descriptions: Sequence[str | None]) -> tuple[list[int] | None,
                                                                                               int | None]:
    """What a file says its bands are: the (0-based) red, green and blue bands in that order, or None when it does not
    say; and the alpha band, or None. The colour interpretation decides; band descriptions ("red", "Green", "B04
    blue"…) stand in where it is undefined."""
    names = [str(c).lower() for c in colorinterp]
    alpha = names.index("alpha") if "alpha" in names else None
    rgb = [names.index(c) if c in names else None for c in ("red", "green", "blue")]
    if None in rgb:
        words = [set(str(d or "").lower().replace("_", " ").replace("-", " ").split()) for d in descriptions]
        rgb = [next((i for i, w in enumerate(words) if colour in w), None) for colour in ("red", "green", "blue")]
    if None in rgb or len(set(rgb)) != 3:
        return None, alpha
    return rgb, alpha


def model_bands(count: int, rgb: list[int] | None, alpha: int | None, chosen: Sequence[int] | None,
                channels: int) -> list[int] | None:
    """The bands the model sees: ``chosen`` when given; a one-channel model each band alone (None); else the
    declared RGB bands, or the three bands of a file that has exactly three besides an alpha; None (each band alone
    as grey) when nothing says which bands are colour."""
    if chosen is not None:
        return list(chosen)
    if channels != 3:
        return None
    if rgb is not None:
        return rgb
    colour = [b for b in range(count) if b != alpha]
    return colour if len(colour) == 3 else None


def _strips(height: int, row_bytes: int):
    rows = max(1, STRIP_BYTES // max(row_bytes, 1))
    for r0 in range(0, height, rows):
        yield r0, min(r0 + rows, height)


def restore_geotiff(restorer, source: str | os.PathLike, target: str | os.PathLike, options=None,
                    bands: Sequence[int] | None = None, nodata: float | None = None) -> None:
    """Restore the GeoTIFF ``source`` into ``target`` (see the module's docstring for what is kept). ``bands``
    (0-based) override the bands the model sees (:func:`model_bands`); ``nodata`` overrides the file's value.
    Pixels that the file's mask, nodata value or alpha band mark as empty take no part and are copied."""
    import rasterio
    from rasterio.enums import MaskFlags, Resampling
    from rasterio.windows import Window

    options = options or RestoreOptions()
    source, target = Path(source), Path(target)
    channels = restorer.channels if hasattr(restorer, "channels") else restorer.config.channels
    partial = target.with_name(f".{target.name}.partial")
    # GDAL's block cache would otherwise grow to 5 % of the machine's memory while the strips go by
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(source) as src, \
            tempfile.TemporaryDirectory(dir=options.scratch_dir, prefix="cdd-dehaze-") as scratch:
        h, w, count, dtype = src.height, src.width, src.count, np.dtype(src.dtypes[0])
        rgb, alpha = declared_roles([c.name for c in src.colorinterp], src.descriptions)
        chosen = model_bands(count, rgb, alpha, bands, channels)
        value = src.nodata if nodata is None else nodata
        masked = any(flags != [MaskFlags.all_valid] for flags in src.mask_flag_enums)
        pixels = np.memmap(Path(scratch) / "input", dtype, "w+", shape=(h, w, count))
        valid = np.ones((h, w), bool) if masked else None
        for r0, r1 in _strips(h, w * count * dtype.itemsize):
            window = Window(0, r0, w, r1 - r0)
            pixels[r0:r1] = src.read(window=window).transpose(1, 2, 0)
            release_pages(pixels)  # written pages of a mapped file need not stay in the RSS
            if masked:
                valid[r0:r1] = src.dataset_mask(window=window) != 0
        restored = np.memmap(Path(scratch) / "output", dtype, "w+", shape=(h, w, count))
        # the file's mask holds the pixels its own nodata marks, but not those of a value the user gives; a float
        # nodata value is also left out of the intensity range
        kept_out = nodata if nodata is not None else value if value is not None and dtype.kind == "f" else None
        if chosen is not None or alpha is None:
            restore_array(restorer, pixels, options, channel_axis=-1, out=restored, bands=chosen, nodata=kept_out,
                          valid=valid)
        else:  # grey bands beside an alpha band: each restored alone, the alpha copied
            imap = IntensityMap.for_array(pixels, nodata=kept_out)
            for b in range(count):
                if b == alpha:
                    copy_rows(pixels[..., b], restored[..., b])
                else:
                    restore_array(restorer, pixels[..., b], options, channel_axis=None, out=restored[..., b],
                                  nodata=kept_out, intensity=imap, valid=valid)
        del pixels
        profile = {**src.profile, "driver": "GTiff"}
        if alpha is not None:
            profile["alpha"] = "YES"  # GeoTIFF marks alpha when the file is made (its ExtraSamples tag)
        if nodata is not None:
            profile["nodata"] = nodata
        try:
            with rasterio.open(partial, "w", **profile) as dst:
                for r0, r1 in _strips(h, w * count * dtype.itemsize):
                    dst.write(restored[r0:r1].transpose(2, 0, 1), window=Window(0, r0, w, r1 - r0))
                    release_pages(restored)
                    if src.mask_flag_enums[0] == [MaskFlags.per_dataset]:  # an internal mask band: kept as is
                        dst.write_mask(src.dataset_mask(window=Window(0, r0, w, r1 - r0)),
                                       window=Window(0, r0, w, r1 - r0))
                dst.colorinterp = src.colorinterp
                for b, description in enumerate(src.descriptions, start=1):
                    if description:
                        dst.set_band_description(b, description)
                    dst.update_tags(b, **src.tags(b))
                dst.update_tags(**src.tags())
                dst.scales, dst.offsets, dst.units = src.scales, src.offsets, src.units
            del restored
            factors = src.overviews(1)
            if factors:
                with rasterio.open(partial, "r+") as dst:
                    dst.build_overviews(factors, Resampling.average)
                    dst.update_tags(ns="rio_overview", resampling="average")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
