"""How far bf16 autocast moves a model's output from fp32, and what it does to speed, on this machine.

    python benchmarks/bench_precision.py --model default [--side 256] [--json results/precision.json]

Restores scikit-image's colour photos (hazed with the sample-data recipe, resized to ``--side`` on the long
side) with fp32 and with bf16 autocast, whole-image, and reports per image the largest and mean absolute
difference in 8-bit steps and the seconds of each. The issue's bar: bf16 stays within 2/255 of fp32.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from skimage.transform import resize

from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.restore import RestoreOptions, restore_array
from napari_cdd_dehaze.synthesis import demo_photos, random_haze


def hazy_photos(side: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name, photo in demo_photos().items():
        scale = side / max(photo.shape[:2])
        small = resize(photo, (round(photo.shape[0] * scale), round(photo.shape[1] * scale)), anti_aliasing=True)
        out[name] = np.rint(np.clip(random_haze(small.astype(np.float32), rng), 0, 1) * 255).astype(np.uint8)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--json")
    args = parser.parse_args()
    model = load_model(args.model)
    rows = []
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; model "
          f"{args.model}; whole image, long side {args.side}")
    print("| image | max abs diff (/255) | mean abs diff (/255) | fp32 s | bf16 s |")
    print("|---|---|---|---|---|")
    for name, hazy in hazy_photos(args.side).items():
        outputs, seconds = {}, {}
        for precision in ("fp32", "bf16"):
            restore_array(model, hazy[:32, :32], RestoreOptions(device="cpu", tile=0, precision=precision))
            start = time.perf_counter()
            outputs[precision] = restore_array(model, hazy.astype(np.float32) / 255,
                                               RestoreOptions(device="cpu", tile=0, precision=precision))
            seconds[precision] = time.perf_counter() - start
        diff = np.abs(outputs["fp32"] - outputs["bf16"]) * 255
        rows.append({"image": name, "shape": list(hazy.shape), "max_abs_255": float(diff.max()),
                     "mean_abs_255": float(diff.mean()), "fp32_s": seconds["fp32"], "bf16_s": seconds["bf16"]})
        r = rows[-1]
        print(f"| {name} {hazy.shape[1]}×{hazy.shape[0]} | {r['max_abs_255']:.2f} | {r['mean_abs_255']:.3f} | "
              f"{r['fp32_s']:.2f} | {r['bf16_s']:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "torch": torch.__version__, "model": args.model,
                       "side": args.side, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
