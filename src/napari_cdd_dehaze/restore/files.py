"""Restoring files and folders: each image to a file of the same kind, the relative layout of a folder kept.

What the CLI's ``apply`` and the Restore widget's folder mode share. A batch can be stopped and run again: an output
that exists is skipped unless ``overwrite`` (outputs appear atomically, so one that exists is whole), a file that
fails is named and the rest go on, and a stop between or inside files leaves no partial output.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_cdd_dehaze.io.image_files import (
    GEOREFERENCING_TAGS,
    IMAGE_SUFFIXES,
    ImageReadError,
    declared_channels,
    declared_nodata,
    kept_tiff_tags,
    mapped_tiff_output,
    read_image,
    write_image,
)

from .engine import RestoreOptions, Restorer, restore_array
from .geotiff import GEO_EXTRA, rasterio_available, restore_geotiff
from .ome_zarr import is_ome_zarr, restore_ome_zarr
from .windows import Cancelled


@dataclass(frozen=True)
class FileJob:
    source: Path
    target: Path


@dataclass
class BatchReport:
    """What a batch did: files restored, skipped (their output existed) and failed (with the reason)."""

    restored: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    stopped: bool = False

    def summary(self) -> str:
        text = f"{len(self.restored)} restored, {len(self.skipped)} skipped (done before), {len(self.failed)} failed"
        return text + (" (stopped)" if self.stopped else "")


def plan_jobs(inputs: Iterable[str | Path], out_dir: str | Path) -> list[FileJob]:
    """One job per image: a file goes to ``out_dir`` under its own name; a folder's images (recursively, sorted)
    go to the same relative paths under ``out_dir``. Files already under ``out_dir`` are never inputs."""
    out_dir = Path(out_dir)
    jobs = []
    for item in map(Path, inputs):
        if item.is_dir() and not is_ome_zarr(item):
            found = sorted(p for p in _walk(item) if not p.name.startswith(".") and not _inside(p, out_dir))
            jobs += [FileJob(p, out_dir / p.relative_to(item)) for p in found]
        else:
            jobs.append(FileJob(item, out_dir / item.name))
    return jobs


def _walk(folder: Path) -> Iterable[Path]:
    """Image files under ``folder`` and OME-Zarr images (folders themselves, not entered)."""
    for entry in folder.iterdir():
        if entry.is_dir():
            if is_ome_zarr(entry):
                yield entry
            elif not entry.name.startswith("."):
                yield from _walk(entry)
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            yield entry


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def parse_bands(text: str | None) -> list[int] | None:
    """Band numbers as users write them, from 1 as GDAL counts (``"4,3,2"``), → 0-based indices ([3, 2, 1])."""
    if not text or not text.strip():
        return None
    try:
        bands = [int(b) - 1 for b in text.replace(" ", "").split(",")]
    except ValueError:
        raise ValueError(f"bands are numbers from 1, comma-separated (e.g. 4,3,2), got {text!r}") from None
    if min(bands) < 0:
        raise ValueError(f"bands are counted from 1, got {text!r}")
    return bands


def band_axis(shape: tuple[int, ...], bands: Sequence[int]) -> int:
    """The axis of a (C, Y, X) or (Y, X, C) image that holds ``bands``: the last when it is long enough for them and
    no longer than the first, else the first (a scene's bands are fewer than its rows)."""
    needed = max(bands) + 1
    if len(shape) != 3 or max(shape[0], shape[-1]) < needed:
        raise ValueError(f"bands {[b + 1 for b in bands]} need an image with that many bands, got shape {shape}")
    return -1 if needed <= shape[-1] <= shape[0] or shape[0] < needed else 0


def restore_file(restorer: Restorer, source: Path, target: Path, options: RestoreOptions | None = None,
                 bands: Sequence[int] | None = None, nodata: float | None = None) -> None:
    """Restore one image file into ``target``: same shape, dtype and format, GeoTIFF tags kept; an uncompressed TIFF
    is read and written window by window (memory-mapped), so it may be larger than memory. ``bands`` (0-based):
    the bands the model sees, in that order; the others are copied. ``nodata`` (default: the value the file
    declares; also pixels of alpha 0 where the file declares alpha): pixels without data, left out and written back
    as they were. A GeoTIFF goes through rasterio where it is installed (:mod:`napari_cdd_dehaze.restore.geotiff`)."""
    if is_ome_zarr(source):
        if bands is not None or nodata is not None:
            raise ValueError(f"{source}: an OME-Zarr image is restored plane by plane as grey; --bands and --nodata "
                             "are for GeoTIFFs and other multiband files")
        return restore_ome_zarr(restorer, source, target, options)
    tags = kept_tiff_tags(source)  # read once: written back, and the nodata they declare
    if any(tag[0] in GEOREFERENCING_TAGS for tag in tags):
        if rasterio_available():
            target.parent.mkdir(parents=True, exist_ok=True)
            return restore_geotiff(restorer, source, target, options, bands, nodata)
        _warn_without_rasterio(source)
    image = read_image(source, memory_map=True)
    layout = {} if bands is None else {"bands": bands, "channel_axis": band_axis(image.shape, bands)}
    layout["nodata"] = declared_nodata(tags) if nodata is None else nodata
    channels = declared_channels(source, image.shape) if bands is None else ""
    if channels == "alpha":  # alpha 0: no data there, copied as it is
        layout["valid"] = np.asarray(image[..., -1]) != 0
    elif channels == "planar rgb":  # (3, Y, X) that the file calls RGB: colour
        layout.update(bands=[0, 1, 2], channel_axis=0)
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.memmap):
        with mapped_tiff_output(target, image, extratags=tags) as out:
            restore_array(restorer, image, options, out=out, **layout)
    else:
        write_image(target, restore_array(restorer, image, options, **layout), extratags=tags)


def _warn_without_rasterio(source: Path) -> None:
    import warnings

    warnings.warn(f"{source}: a GeoTIFF restored without rasterio keeps its GeoTIFF tags but is written uncompressed, "
                  f"without overviews, and read whole when compressed; for the rest: {GEO_EXTRA}", stacklevel=3)


def restore_files(restorer: Restorer, jobs: Sequence[FileJob], options: RestoreOptions | None = None,
                  overwrite: bool = False, progress_for: Callable[[FileJob], Callable | None] | None = None,
                  on_file: Callable[[int, int, FileJob, str], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, bands: Sequence[int] | None = None,
                  nodata: float | None = None) -> BatchReport:
    """Run ``jobs`` in order and say what happened to each.

    ``progress_for(job)`` gives the band/tile progress callback of one file; ``on_file(done, total, job, status)``
    is called after each file with status "restored", "skipped" or "failed: …"; ``should_stop()`` is asked
    between files and inside them (a file stopped midway is not written).
    """
    options = options or RestoreOptions()
    report, targets = BatchReport(), {}
    for i, job in enumerate(jobs):
        if should_stop is not None and should_stop():
            report.stopped = True
            break
        status = "restored"
        try:
            if job.target in targets:
                raise ValueError(f"same output as {targets[job.target]}: {job.target}")
            targets[job.target] = job.source
            if job.target.exists() and not overwrite:
                report.skipped.append(job.source)
                status = "skipped"
            else:
                progress = progress_for(job) if progress_for is not None else options.progress
                restore_file(restorer, job.source, job.target,
                             dataclasses.replace(options, progress=progress,
                                                 should_stop=should_stop or options.should_stop), bands, nodata)
                report.restored.append(job.source)
        except Cancelled:
            report.stopped = True
            break
        except (ImageReadError, ValueError, OSError, ImportError) as exc:
            message = str(exc) if str(job.source) in str(exc) else f"{job.source}: {exc}"
            report.failed.append((job.source, message))
            status = f"failed: {message}"
        if on_file is not None:
            on_file(i + 1, len(jobs), job, status)
    return report
