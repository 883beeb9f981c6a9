"""Pack an unpaired training set small enough to travel to a leased GPU machine.

    python benchmarks/pack_gpudata.py DATA/haze-v2 .gpudata          # then run(..., carry=[".gpudata"])
    OUT=/tmp/out BENCH=0 bash benchmarks/gpu_lease.sh                # reads .gpudata by default

The device tool carries at most 64 MiB with the working tree, and a full training set (PNG photos) is several
times that. ``degraded/`` and ``clean/`` are written with each image shrunk so that its long side is at most
``--side`` pixels, as JPEG (``--quality``). Recipes that train on 96-128 px crops of images shrunk to
``load_size`` lose nothing to this: the shrink they do anyway is far larger. ``val/`` is copied byte for byte
(its pairs are scored as they are). A file that cannot be read is skipped with a warning, never packed half-made.
The script stops with an error when the packed set is larger than ``--limit-mb``, and replaces an existing
output folder only when it holds an earlier pack (its ``.packed`` marker).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from pathlib import Path

from PIL import Image

from napari_cdd_dehaze.gan.data import list_images
from napari_cdd_dehaze.io.image_files import read_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from make_hazy_set import shrink, to_u8, unit_rgb  # noqa: E402  (the training set's own conversions)

PACK_MARKER = ".packed"  # written into every pack: only a folder holding it may be replaced


def pack_folder(source: Path, target: Path, side: int, quality: int) -> tuple[int, int]:
    """Every image under ``source`` shrunk into ``target`` (same relative paths, ``.jpg``): (packed, skipped)."""
    packed = skipped = 0
    for path in list_images(source):
        try:
            image = read_image(path)
        except Exception as error:  # a corrupt or unreadable file: skip it, say which
            warnings.warn(f"skipped {path}: {error}", stacklevel=2)
            skipped += 1
            continue
        out = (target / path.relative_to(source)).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_u8(shrink(unit_rgb(image), side))).save(out, quality=quality)
        packed += 1
    return packed, skipped


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="a set with degraded/, clean/ and (optionally) val/")
    parser.add_argument("out", type=Path)
    parser.add_argument("--side", type=int, default=512, help="longest side of a packed image (pixels)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--limit-mb", type=float, default=60.0, help="fail when the packed set is larger (MiB)")
    args = parser.parse_args(argv)
    for part in ("degraded", "clean"):
        if not (args.data / part).is_dir():
            parser.error(f"{args.data / part} is not a folder: expected degraded/ and clean/ under {args.data}")
    if args.out.exists():  # replace an earlier pack, never anything else (a mistyped path loses nothing)
        if not (args.out / PACK_MARKER).is_file():
            parser.error(f"{args.out} exists and was not written by this script: choose another output folder")
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    (args.out / PACK_MARKER).write_text(f"packed from {args.data.resolve()} at --side {args.side}\n")
    for part in ("degraded", "clean"):
        packed, skipped = pack_folder(args.data / part, args.out / part, args.side, args.quality)
        print(f"{part}: {packed} images packed, {skipped} skipped")
    if (args.data / "val").is_dir():
        shutil.copytree(args.data / "val", args.out / "val")
        print(f"val: {len(list_images(args.out / 'val'))} files copied as they are")
    size_mb = folder_bytes(args.out) / 2**20
    print(f"{args.out}: {size_mb:.1f} MiB")
    if size_mb > args.limit_mb:
        print(f"too large to carry (over {args.limit_mb} MiB): lower --side or --quality", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
