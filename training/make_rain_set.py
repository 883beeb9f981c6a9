"""Build the unpaired training set of the bundled derainer: rainy photos and clean photos of other scenes.

    python training/make_rain_set.py --rainy RAIN/train/rainy --clean RAIN/train/clean \\
        --photos CLEAR/sun-hays80 CLEAR/kodak24 CLEAR/mcmaster CLEAR/set14 --out DATA

* ``--rainy`` and ``--clean`` are copied to ``DATA/rainy`` and ``DATA/clean`` (real and synthetic rainy photos; clean
  photos of other scenes), as PNG.
* The ``--photos`` folders, their files in sorted order folder after folder, alternate: every second photo gets the
  package's rain (``synthesis.random_rain``, seeded by its position: one in two of them heavy, one in four with a
  veil) and goes to ``DATA/rainy``; the others go to ``DATA/clean`` as they are. No scene is on both sides.
* Every image is scaled down (anti-aliased) so that its short side is at most ``--short-side`` pixels, the scale
  of the standard rain sets (481 × 321), where streaks are a few pixels wide; grey photos become RGB.
* BSDS500 is refused as a source: the standard synthetic rain test sets are rendered on its photos.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skimage.transform import resize

from napari_cdd_dehaze.gan.data import list_images
from napari_cdd_dehaze.imaging.synthesis import random_rain
from napari_cdd_dehaze.io.image_files import read_image, write_image


def load(path: Path, short_side: int) -> np.ndarray:
    image = read_image(path)
    scale = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
    image = image.astype(np.float32) / scale
    image = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    short = min(image.shape[:2])
    if short > short_side:
        factor = short_side / short
        image = resize(image, (round(image.shape[0] * factor), round(image.shape[1] * factor)), anti_aliasing=True)
    return np.clip(image, 0, 1)


def save(image: np.ndarray, path: Path) -> None:
    write_image(path, np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rainy", required=True)
    parser.add_argument("--clean", required=True)
    parser.add_argument("--photos", nargs="+", default=[])
    parser.add_argument("--out", required=True)
    parser.add_argument("--short-side", type=int, default=360)
    args = parser.parse_args()
    for folder in [args.rainy, args.clean, *args.photos]:
        if "bsds500" in str(folder).lower():
            raise SystemExit(f"{folder}: BSDS500 holds the backgrounds of the standard rain test sets; "
                             "it must not be a training source for deraining")
    rainy, clean = Path(args.out) / "rainy", Path(args.out) / "clean"
    for source, target in ((args.rainy, rainy), (args.clean, clean)):
        for path in list_images(source):
            save(load(path, args.short_side), target / f"{path.stem}.png")
    photos = [path for folder in args.photos for path in list_images(folder)]
    for i, path in enumerate(photos):
        image, name = load(path, args.short_side), f"{path.parent.name}-{path.stem}.png"
        if i % 2:
            save(random_rain(image, seed=1000 + i, heavy=i % 4 == 1, veil=i % 8 == 1), rainy / f"synth-{name}")
        else:
            save(image, clean / name)
    print(f"{len(list(rainy.iterdir()))} rainy, {len(list(clean.iterdir()))} clean images in {args.out}")


if __name__ == "__main__":
    main()
