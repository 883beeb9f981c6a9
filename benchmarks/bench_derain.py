"""Deraining benchmark: train DCD-GAN briefly on synthetic rain, measure PSNR/SSIM on held-out photos.

    PYTHONPATH=src python benchmarks/bench_derain.py --clean-source DATA/clear/bsds500/train \\
        --out runs/derain-bench --steps 300 [--preset cpu] [--output rain] [--heavy] [--model RUN_TO_EVALUATE]

* Training data (under OUT/data): the images of ``--clean-source`` in sorted order, alternately made rainy
  (``degraded/``, rain seeded per image) or kept clear (``clean/``), so the two folders never show the
  same scene.
* Held out (OUT/test/{rainy,clear}): scikit-image's five bundled colour photos, never trained on, under
  rain of their own seeds.
* Reported by the ``cdd-dehaze eval`` engine (:func:`napari_cdd_dehaze.evaluate.evaluate`): PSNR, SSIM and
  CIEDE2000 against the clear photo, of the rainy input (``identity``) and of the shipped (EMA) restorer's
  output, per photo and on average, in OUT/eval/report.{md,json}; the same command by hand:
  ``cdd-dehaze eval --paired OUT/test --method identity OUT/run --out OUT/eval``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_cdd_dehaze.evaluate import evaluate
from napari_cdd_dehaze.gan.config import preset
from napari_cdd_dehaze.gan.data import list_images
from napari_cdd_dehaze.gan.trainer import Trainer
from napari_cdd_dehaze.imaging.synthesis import demo_photos, random_rain
from napari_cdd_dehaze.io.image_files import IntensityMap, read_image, to_channels, write_image


def to_u8(a: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)


def write_training_folders(source: Path, out: Path, count: int, heavy: bool) -> tuple[Path, Path]:
    degraded, clean = out / "degraded", out / "clean"
    files = list_images(source)[:count]
    for index, path in enumerate(files):
        array = read_image(path)
        image = to_channels(IntensityMap.for_array(array).to_unit(array), 3).transpose(1, 2, 0)
        if index % 2 == 0:
            write_image(degraded / f"{path.stem}.png", to_u8(random_rain(image, seed=index, heavy=heavy)))
        else:
            write_image(clean / f"{path.stem}.png", to_u8(image))
    return degraded, clean


def write_test_set(out: Path, heavy: bool) -> None:
    for index, (name, photo) in enumerate(demo_photos().items()):
        write_image(out / "clear" / f"{name}.png", to_u8(photo))
        write_image(out / "rainy" / f"{name}.png", to_u8(random_rain(photo, seed=1000 + index, heavy=heavy)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean-source", required=True, help="folder of clear photos to build the training set from")
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=100, help="how many source photos to use (half become rainy)")
    parser.add_argument("--preset", default="cpu", help="DCD-GAN preset (default: cpu)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--crop", type=int, help="override the preset's crop")
    parser.add_argument("--output", choices=["image", "rain"], help="override the preset's output head")
    parser.add_argument("--lr", type=float, help="override the preset's learning rate")
    parser.add_argument("--heavy", action="store_true", help="heavy rain (denser, brighter streaks, stronger veil)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="evaluate this model instead of training one")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)

    write_test_set(out / "test", args.heavy)
    model = Path(args.model) if args.model else out / "run"
    setup = {"heavy": args.heavy}
    if not args.model:
        degraded, clean = write_training_folders(Path(args.clean_source), out / "data", args.images, args.heavy)
        config = preset(args.preset, method="dcd-gan", steps=args.steps, crop=args.crop, lr=args.lr, seed=args.seed,
                        output=args.output, device="cpu", checkpoint_every=max(1, args.steps // 4))
        trainer = Trainer(config, degraded, clean, model)
        start = time.time()
        for event in trainer.events():
            if event.kind == "step" and (event.step % 25 == 0 or event.step == event.total):
                losses = " ".join(f"{k} {v:.3f}" for k, v in event.losses.items())
                print(f"step {event.step}/{event.total} {time.time() - start:.0f} s | {losses}", flush=True)
        setup.update(config=config.to_dict(), train_seconds=round(time.time() - start, 1),
                     degraded_images=len(list_images(degraded)), clean_images=len(list_images(clean)),
                     torch_threads=torch.get_num_threads())
    report = evaluate([out / "test"], [], ["identity", str(model)], device="cpu", tile=0)
    report.write(out / "eval")
    (out / "setup.json").write_text(json.dumps(setup, indent=2))
    print(report.summary_table())
    print(f"report: {out / 'eval' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
