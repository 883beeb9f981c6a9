"""Deraining benchmark: train DCD-GAN briefly on synthetic rain, measure PSNR/SSIM on held-out photos.

    PYTHONPATH=src python benchmarks/derain_eval.py --clean-source DATA/clear/bsds500/train \\
        --out runs/derain-bench --steps 300 [--preset cpu] [--heavy] [--model RUN_TO_EVALUATE]

* Training data (under OUT/data): the images of ``--clean-source`` in sorted order, alternately made rainy
  (``degraded/``, rain seeded per image) or kept clear (``clean/``), so the two folders never show the
  same scene.
* Held out (OUT/test/{rainy,clear}): scikit-image's five bundled colour photos, never trained on, under
  rain of their own seeds.
* Reported: PSNR and SSIM (scikit-image, data range 1, colour) against the clear photo, of the rainy input
  and of the shipped (EMA) restorer's output, per photo and on average; also written to OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_cdd_dehaze.checkpoint import load_restorer
from napari_cdd_dehaze.config import preset
from napari_cdd_dehaze.data import list_images
from napari_cdd_dehaze.image_files import IntensityMap, read_image, to_channels, write_image
from napari_cdd_dehaze.restore import restore_array
from napari_cdd_dehaze.synthesis import demo_photos, random_rain
from napari_cdd_dehaze.trainer import Trainer


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


def write_test_set(out: Path, heavy: bool) -> list[str]:
    for index, (name, photo) in enumerate(demo_photos().items()):
        write_image(out / "clear" / f"{name}.png", to_u8(photo))
        write_image(out / "rainy" / f"{name}.png", to_u8(random_rain(photo, seed=1000 + index, heavy=heavy)))
    return list(demo_photos())


def scores(clear: np.ndarray, image: np.ndarray) -> dict[str, float]:
    return {"psnr": float(peak_signal_noise_ratio(clear, image, data_range=1.0)),
            "ssim": float(structural_similarity(clear, image, data_range=1.0, channel_axis=-1))}


def evaluate(model: Path, test: Path, names: list[str]) -> dict:
    restorer = load_restorer(model)
    rows = {}
    for name in names:
        clear = read_image(test / "clear" / f"{name}.png") / 255.0
        rainy = read_image(test / "rainy" / f"{name}.png") / 255.0
        with torch.no_grad():
            restored = restore_array(restorer, rainy.astype(np.float32))
        write_image(test / "restored" / f"{name}.png", to_u8(restored))
        rows[name] = {"rainy": scores(clear, rainy), "restored": scores(clear, restored)}
    mean = {kind: {metric: float(np.mean([r[kind][metric] for r in rows.values()])) for metric in ("psnr", "ssim")}
            for kind in ("rainy", "restored")}
    return {"per_image": rows, "mean": mean}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean-source", required=True, help="folder of clear photos to build the training set from")
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=100, help="how many source photos to use (half become rainy)")
    parser.add_argument("--preset", default="cpu", help="DCD-GAN preset (default: cpu)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--crop", type=int, help="override the preset's crop")
    parser.add_argument("--lr", type=float, help="override the preset's learning rate")
    parser.add_argument("--heavy", action="store_true", help="heavy rain (denser, brighter streaks, stronger veil)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="evaluate this model instead of training one")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)

    names = write_test_set(out / "test", args.heavy)
    model = Path(args.model) if args.model else out / "run"
    setup = {"heavy": args.heavy}
    if not args.model:
        degraded, clean = write_training_folders(Path(args.clean_source), out / "data", args.images, args.heavy)
        config = preset(args.preset, method="dcd-gan", steps=args.steps, crop=args.crop, lr=args.lr, seed=args.seed,
                        device="cpu", checkpoint_every=max(1, args.steps // 4))
        trainer = Trainer(config, degraded, clean, model)
        start = time.time()
        for event in trainer.events():
            if event.kind == "step" and (event.step % 25 == 0 or event.step == event.total):
                losses = " ".join(f"{k} {v:.3f}" for k, v in event.losses.items())
                print(f"step {event.step}/{event.total} {time.time() - start:.0f} s | {losses}", flush=True)
        setup.update(config=config.to_dict(), train_seconds=round(time.time() - start, 1),
                     degraded_images=len(list_images(degraded)), clean_images=len(list_images(clean)),
                     torch_threads=torch.get_num_threads())
    result = {"setup": setup, **evaluate(model, out / "test", names)}
    (out / "results.json").write_text(json.dumps(result, indent=2))

    print("| photo | rainy PSNR | restored PSNR | rainy SSIM | restored SSIM |\n|---|---|---|---|---|")
    for name, row in [*result["per_image"].items(), ("**mean**", result["mean"])]:
        print(f"| {name} | {row['rainy']['psnr']:.2f} | {row['restored']['psnr']:.2f} | "
              f"{row['rainy']['ssim']:.3f} | {row['restored']['ssim']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
