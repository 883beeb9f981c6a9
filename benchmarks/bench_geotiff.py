"""A large multiband GeoTIFF through ``cdd-dehaze apply``: seconds and peak memory.

Writes a synthetic 4-band uint16 GeoTIFF (red, green, blue, NIR; a hazy astronaut photo enlarged by repeating
pixels, GeoKeys for EPSG:32633, GDAL nodata 0 and a nodata frame), uncompressed or (``--compress``, with rasterio)
deflate-compressed in 512² tiles. ``--reader tifffile`` restores it as an installation without rasterio does
(memory-mapped, window by window); ``--reader rasterio`` through rasterio (decoded and encoded by strips). It runs
``cdd-dehaze apply`` in a child process and reports
its wall time, its peak RSS, and (sampled from /proc) the peaks of its anonymous memory and of the mapped file
pages resident in it; and checks the output: same shape, dtype and GeoTIFF tags, the frame still nodata,
the fourth band bit-identical.

    python benchmarks/bench_geotiff.py                          # 16384 × 16384, in a temporary folder
    python benchmarks/bench_geotiff.py --side 4096 --dir /scratch --json out.json
    python benchmarks/bench_geotiff.py --reader rasterio --compress   # a tiled, compressed file through rasterio
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

GEO_TAGS = [(33550, "d", 3, (10.0, 10.0, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 5000000.0, 0.0), True),
            (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True),
            (42113, "s", 0, "0", True)]


def compress_scene(path: Path, target: Path) -> None:
    """``path`` rewritten by rasterio as a deflate-compressed GeoTIFF of 512² tiles, a strip at a time."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path) as src:
        profile = {**src.profile, "compress": "deflate", "tiled": True, "blockxsize": 512, "blockysize": 512,
                   "photometric": "RGB"}  # the first three bands declared red, green, blue (the fourth: NIR)
        with rasterio.open(target, "w", **profile) as dst:
            for band, name in enumerate(("red", "green", "blue", "nir"), start=1):
                dst.set_band_description(band, name)
            for y in range(0, src.height, 1024):
                window = Window(0, y, src.width, min(1024, src.height - y))
                dst.write(src.read(window=window), window=window)


def write_scene(path: Path, side: int, frame: int) -> None:
    """The scene written row block by row block into a memory-mapped GeoTIFF (no full-size array in memory)."""
    from skimage import data

    photo = data.astronaut().astype(np.float32) / 255
    hazy = ((0.55 * photo + 0.4) * 65535).astype(np.uint16)
    k = -(-side // 512)
    out = tifffile.memmap(path, shape=(side, side, 4), dtype=np.uint16, photometric="rgb", extrasamples=[0],
                          extratags=GEO_TAGS)
    for y in range(0, side, 1024):
        rows = np.repeat(np.repeat(hazy[y // k: -(-(y + 1024) // k)], k, 0), k, 1)[: min(1024, side - y), :side]
        out[y:y + rows.shape[0], :, :3] = rows
        out[y:y + rows.shape[0], :, 3] = rows[..., 0] // 2  # a stand-in NIR band
    out[:frame], out[-frame:], out[:, :frame], out[:, -frame:] = 0, 0, 0, 0
    out.flush()
    del out


def _rss_parts(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed) resident memory of a process in GiB, from /proc (Linux); zeros elsewhere.

    Pages of a memory-mapped file count in a process's RSS while they are resident, but they are the kernel's page
    cache, which it drops under pressure; the anonymous part is the process's own memory."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return tuple(int(fields[k].split()[0]) / 2**20 for k in ("RssAnon", "RssFile"))
    except (OSError, KeyError, ValueError):
        return 0.0, 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--frame", type=int, default=200, help="width of the nodata frame (pixels)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--dir", help="folder for the two files (default: a temporary one, removed after)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--reader", choices=["tifffile", "rasterio"], default="tifffile")
    parser.add_argument("--compress", action="store_true", help="write the input deflate-compressed in tiles")
    parser.add_argument("--write-only", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_only:
        write_scene(Path(args.write_only), args.side, args.frame)
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        source, out = Path(folder) / "in" / "scene.tif", Path(folder) / "out"
        source.parent.mkdir()
        start = time.perf_counter()
        # in a process of its own: a child forked from a parent that holds the scene's pages would count them
        subprocess.run([sys.executable, __file__, "--write-only", str(source), "--side", str(args.side),
                        "--frame", str(args.frame)], check=True)
        if args.compress:
            plain = source.with_name("plain.tif")
            source.rename(plain)
            compress_scene(plain, source)
            plain.unlink()
        print(f"wrote {source} ({source.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
        start = time.perf_counter()
        # the tifffile reader: the path of an installation without rasterio
        code = ("import sys, napari_cdd_dehaze.restore.files as f, napari_cdd_dehaze.cli as c; "
                + ("f.rasterio_available = lambda: False; " if args.reader == "tifffile" else "")
                + "sys.exit(c.main(sys.argv[1:]))")
        child = subprocess.Popen([sys.executable, "-c", code, "apply", str(source), "--out", str(out),
                                  "--model", args.model])
        anon = file_pages = 0.0
        while True:  # the child's own memory and the file pages it maps, sampled; its peak RSS when it ends
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            a, f = _rss_parts(child.pid)
            anon, file_pages = max(anon, a), max(file_pages, f)
            time.sleep(0.02)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise SystemExit(f"cdd-dehaze apply failed ({child.returncode})")
        seconds = time.perf_counter() - start
        peak = usage.ru_maxrss / 2**20  # KiB → GiB, of this child alone
        restored, original = tifffile.imread(out / "scene.tif", aszarr=True), tifffile.imread(source, aszarr=True)
        restored, original = (__import__("zarr").open(store, mode="r") for store in (restored, original))
        f = args.frame
        checks = {"shape and dtype": restored.shape == original.shape and restored.dtype == original.dtype,
                  "frame is nodata": bool((restored[:f] == 0).all() and (restored[:, :f] == 0).all()),
                  "NIR unchanged": bool(np.array_equal(restored[::97, :, 3], original[::97, :, 3])),
                  "RGB changed": bool(not np.array_equal(restored[f:f + 64, f:f + 64, :3],
                                                         original[f:f + 64, f:f + 64, :3]))}
        if args.reader == "tifffile":
            with tifffile.TiffFile(out / "scene.tif") as a, tifffile.TiffFile(source) as b:
                checks["GeoTIFF tags"] = all(a.pages[0].tags[c].value == b.pages[0].tags[c].value
                                             for c in (33550, 33922, 34735, 42113))
        else:
            import rasterio
            with rasterio.open(out / "scene.tif") as a, rasterio.open(source) as b:
                checks["CRS, transform, nodata, compression"] = (a.crs, a.transform, a.nodata, a.compression) == (
                    b.crs, b.transform, b.nodata, b.compression)
        size_gib = np.prod(original.shape) * 2 / 2**30
        del restored, original
    result = {"side": args.side, "bands": 4, "reader": args.reader, "compressed": args.compress,
              "pixels_gib": round(float(size_gib), 2), "seconds": round(seconds, 1),
              "peak_rss_gib": round(peak, 2), "peak_anonymous_gib": round(anon, 2),
              "peak_file_pages_gib": round(file_pages, 2), "checks": checks,
              "machine": platform.processor() or platform.machine(),
              "python": platform.python_version()}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
