"""OME-Zarr in, OME-Zarr out (the optional ``[zarr]`` extra): read lazily, written chunk by chunk, pyramid rebuilt.

An OME-Zarr image is a zarr group whose metadata (``multiscales``: axes, one dataset per resolution level and its
coordinate transformations; ``omero``: channel names, colours…) describes arrays of the same image at falling
resolutions. The full-resolution level is restored one (Y, X) plane at a time (every channel, z slice and time point
alone, as a grey image), straight into the output's level 0; each lower level is then computed from the level above
it by block means over the factor between their shapes, a few planes at a time. So a volume larger than memory
restores in the memory of a few planes. The output keeps the input's metadata as it is (OME-Zarr 0.4 and 0.5, zarr
formats 2 and 3), the shapes, chunks, dtypes and compressors of every level, and appears under its name only when
complete.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .lazy import restore_out_of_core

ZARR_EXTRA = 'pip install "napari-cdd-dehaze[zarr]"'


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr group folder (``*.zarr``, or holding zarr metadata) with OME multiscales."""
    path = Path(path)
    if not path.is_dir():
        return False
    for name in ("zarr.json", ".zattrs"):
        file = path / name
        if file.is_file() and "multiscales" in file.read_text(errors="replace"):
            return True
    return False


def _zarr():
    try:
        import zarr
    except ImportError as exc:
        raise ImportError(f"reading and writing OME-Zarr needs the zarr extra: {ZARR_EXTRA}") from exc
    return zarr


def multiscales(attrs: dict) -> dict:
    """The first multiscales entry of a group's attributes (OME-Zarr 0.5 nests it under "ome")."""
    entries = attrs.get("ome", attrs).get("multiscales") or []
    if not entries:
        raise ValueError("not an OME-Zarr image: no multiscales metadata")
    return entries[0]


def axis_names(entry: dict, ndim: int) -> list[str]:
    axes = entry.get("axes") or ["t", "c", "z", "y", "x"][-ndim:]  # 0.1/0.2 had no axes: always TCZYX
    return [a["name"] if isinstance(a, dict) else str(a) for a in axes]


def restore_ome_zarr(restorer, source: str | os.PathLike, target: str | os.PathLike, options=None) -> None:
    """Restore the OME-Zarr image ``source`` into ``target`` (see the module's docstring)."""
    zarr = _zarr()
    source, target = Path(source), Path(target)
    src = zarr.open_group(str(source), mode="r")
    attrs = src.attrs.asdict()
    entry = multiscales(attrs)
    paths = [d["path"] for d in entry["datasets"]]
    axes = axis_names(entry, src[paths[0]].ndim)
    if axes[-2:] != ["y", "x"]:
        raise ValueError(f"{source}: expected the last two axes to be y and x, got {axes}")
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        dst = zarr.open_group(str(partial), mode="w", zarr_format=src.metadata.zarr_format)
        dst.attrs.update(attrs)
        levels = []
        for path in paths:
            a = src[path]
            levels.append(dst.create_array(path, shape=a.shape, chunks=a.chunks, dtype=a.dtype,
                                           compressors=a.compressors, fill_value=a.fill_value))
        restore_out_of_core(restorer, src[paths[0]], options, channel_axis=None, out=levels[0])
        for above, below in zip(levels, levels[1:], strict=False):
            downsample_into(above, below)
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def downsample_into(above, below) -> None:
    """``below`` (a lower resolution level) as block means of ``above`` over the factor between their shapes, one
    output plane at a time; edge blocks average the pixels they have."""
    factors = [max(1, round(a / b)) for a, b in zip(above.shape, below.shape, strict=True)]
    fy, fx = factors[-2:]
    for index in np.ndindex(*below.shape[:-2]):
        sources = tuple(slice(i * f, min((i + 1) * f, n)) for i, f, n in zip(index, factors, above.shape, strict=False))
        block = np.asarray(above[sources], np.float64)
        block = block.reshape(-1, *block.shape[-2:]).mean(axis=0)
        h, w = below.shape[-2:]
        padded = np.pad(block, ((0, max(0, h * fy - block.shape[0])), (0, max(0, w * fx - block.shape[1]))),
                        mode="edge")
        means = padded[: h * fy, : w * fx].reshape(h, fy, w, fx).mean(axis=(1, 3))
        if np.issubdtype(below.dtype, np.integer):
            info = np.iinfo(below.dtype)
            means = np.clip(np.rint(means), info.min, info.max)
        below[index] = means.astype(below.dtype)
