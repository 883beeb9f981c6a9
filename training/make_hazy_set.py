"""Build the unpaired training set of the bundled default model from clear photos (and measured depth).

    python training/make_hazy_set.py --clear SHARED/train/clear --depth SHARED/train/depth --out DATA [--versions 2]

* The photos are split in two by a hash of their path: one half is hazed (``DATA/degraded``), the other
  half is copied as the clean domain (``DATA/clean``) — the two domains never show the same scene.
* Hazing uses the atmospheric scattering model with a depth prior (``synthesis.depth_prior``) for photos
  and the measured depth for the Middlebury scenes (all of which go to the degraded side), each image
  ``--versions`` times with a different density (``--beta``) and airlight (``--airlight``).
* ``--holdout P`` sets about P % of the photos aside (again by hash) as a paired validation set,
  ``DATA/val/hazy`` and ``DATA/val/clear``, seen by neither domain: the place to choose a checkpoint
  without touching the held-out evaluation images.
* ``--light MIN MAX`` scales each training image's light by a factor drawn uniformly in that range, the
  clean photos as they are copied and the degraded ones *before* the haze (a scene lit less brightly under
  the same veil, as indoors). Without it, a restorer sees dim scenes under haze never, and its discriminator
  has only well-lit photos to call clean; the validation pairs keep their light. The factors come from a
  generator of their own, so the haze drawn for each image is the same with or without ``--light``.
* ``--nearest MIN MAX`` lifts each degraded photo's depth prior so that its nearest point lies at a fraction
  of the far one drawn uniformly in that range (``synthesis.lift_nearest``): haze with no clear foreground, as
  in a room, from the air or into a fog bank, which the prior alone (nearest at 5–35 %) never gives. Its own
  generator again: the other draws, the measured-depth scenes and the validation pairs are unchanged.
* Deterministic for a given ``--seed``. Images are written as PNG; the long side is capped at ``--max-side``.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from napari_cdd_dehaze.gan.data import list_images
from napari_cdd_dehaze.imaging.synthesis import depth_prior, haze_with_depth, lift_nearest, measured_depth
from napari_cdd_dehaze.io.image_files import ImageReadError, read_image, write_image


def unit_rgb(image: np.ndarray) -> np.ndarray:
    scale = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
    image = image.astype(np.float32) / scale
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    from skimage.transform import resize

    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    return resize(image, (round(h * s), round(w * s)), anti_aliasing=True, preserve_range=True).astype(np.float32)


def to_u8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clear", required=True, help="folder of clear photos (read recursively)")
    parser.add_argument("--depth", help="folder of <scene>/{rgb.png,depth_mm.png} with measured depth")
    parser.add_argument("--out", required=True)
    parser.add_argument("--versions", type=int, default=2, help="hazy versions per degraded-side image")
    parser.add_argument("--max-side", type=int, default=768)
    parser.add_argument("--holdout", type=float, default=0.0, help="percent of photos kept as validation pairs")
    parser.add_argument("--beta", type=float, nargs=2, default=(0.6, 3.0), metavar=("MIN", "MAX"),
                        help="haze density per unit relative depth, drawn uniformly (default 0.6 3.0: dense; "
                             "0.1 keeps 90 %% of the far light, light haze)")
    parser.add_argument("--airlight", type=float, nargs=2, default=(0.7, 1.0), metavar=("MIN", "MAX"),
                        help="grey level of the airlight, drawn uniformly (each channel then tinted by ±0.04)")
    parser.add_argument("--light", type=float, nargs=2, default=(1.0, 1.0), metavar=("MIN", "MAX"),
                        help="factor on each training image's light, drawn uniformly (default 1 1: unchanged)")
    parser.add_argument("--nearest", type=float, nargs=2, default=(0.0, 0.0), metavar=("MIN", "MAX"),
                        help="lift each degraded photo's depth prior so its nearest point lies at this fraction of "
                             "the far one, drawn uniformly (default 0 0: the prior as it is)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 < args.light[0] <= args.light[1] <= 1:
        parser.error(f"--light must be two factors 0 < MIN <= MAX <= 1, got {args.light}")
    if not 0 <= args.nearest[0] <= args.nearest[1] < 1:
        parser.error(f"--nearest must be two fractions 0 <= MIN <= MAX < 1, got {args.nearest}")

    rng = np.random.default_rng(args.seed)
    light_rng = np.random.default_rng([args.seed, 1])  # its own stream: the haze draws do not depend on --light
    lift_rng = np.random.default_rng([args.seed, 2])  # and one for --nearest

    def lifted(depth: np.ndarray) -> np.ndarray:
        return lift_nearest(depth, lift_rng.uniform(*args.nearest))  # the default (0, 0) leaves it as it is

    def lit(image: np.ndarray) -> np.ndarray:
        return image * np.float32(light_rng.uniform(*args.light))  # the default (1, 1) leaves it as it is

    out = Path(args.out)
    counts = {"degraded": 0, "clean": 0, "val": 0, "skipped": 0}
    for path in list_images(args.clear):
        name = "_".join(path.relative_to(args.clear).with_suffix("").parts)
        digest = hashlib.sha1(name.encode()).digest()
        to_haze, held_out = digest[0] % 2 == 0, int.from_bytes(digest[1:3], "big") % 10000 < args.holdout * 100
        try:
            photo = shrink(unit_rgb(read_image(path)), args.max_side)
        except ImageReadError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            counts["skipped"] += 1
            continue
        if held_out:
            write_image(out / "val" / "clear" / f"{name}.png", to_u8(photo))
            hazy = haze_with_depth(photo, depth_prior(photo, rng), rng, args.beta, args.airlight)
            write_image(out / "val" / "hazy" / f"{name}.png", to_u8(hazy))
            counts["val"] += 1
            continue
        if not to_haze:
            write_image(out / "clean" / f"{name}.png", to_u8(lit(photo)))
            counts["clean"] += 1
            continue
        for v in range(args.versions):
            hazy = haze_with_depth(lit(photo), lifted(depth_prior(photo, rng)), rng, args.beta, args.airlight)
            write_image(out / "degraded" / f"{name}_h{v}.png", to_u8(hazy))
            counts["degraded"] += 1
    for scene in sorted(Path(args.depth).iterdir()) if args.depth else []:
        photo = unit_rgb(read_image(scene / "rgb.png"))
        depth = measured_depth(read_image(scene / "depth_mm.png"))
        for v in range(args.versions):
            write_image(out / "degraded" / f"middlebury_{scene.name}_h{v}.png",
                        to_u8(haze_with_depth(lit(photo), depth, rng, args.beta, args.airlight)))
            counts["degraded"] += 1
    print(f"{out}: {counts['degraded']} hazy, {counts['clean']} clean, {counts['val']} validation pairs, "
          f"{counts['skipped']} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
