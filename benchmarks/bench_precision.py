"""How far bf16 (and fp16) autocast moves a model's output from fp32, and what it does to speed.

    python benchmarks/bench_precision.py --model default [--side 256] [--json precision.json]
    python benchmarks/bench_precision.py --device cuda --precision bf16 fp16 --side 1024

Restores scikit-image's colour photos (hazed with the sample-data recipe, resized to ``--side`` on the long
side) with fp32 and with bf16 autocast, whole-image, and reports per image the largest and mean absolute
difference in 8-bit steps and the seconds of each (on a GPU: after a synchronisation, i.e. with the
result back in host memory). The bar: the reduced precision stays within 2/255 of fp32.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from skimage.transform import resize

from napari_cdd_dehaze.imaging.synthesis import demo_photos, random_haze
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array


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
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps")
    parser.add_argument("--precision", nargs="+", default=["bf16"], choices=["bf16", "fp16"],
                        help="reduced precisions to compare with fp32")
    parser.add_argument("--json")
    args = parser.parse_args()
    model = load_model(args.model)
    rows = []
    where = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
             else f"{torch.get_num_threads()} threads")
    print(f"# {platform.machine()}, {where}, torch {torch.__version__}; model {args.model}; whole image, long side "
          f"{args.side}, on {args.device}")
    print("| image | precision | max abs diff (/255) | mean abs diff (/255) | fp32 s | reduced s |")
    print("|---|---|---|---|---|---|")
    for name, hazy in hazy_photos(args.side).items():
        outputs, seconds = {}, {}
        for precision in ("fp32", *args.precision):
            options = RestoreOptions(device=args.device, tile=0, precision=precision)
            restore_array(model, hazy, options)  # warm-up (and the GPU's algorithm choice for this size)
            start = time.perf_counter()
            outputs[precision] = restore_array(model, hazy.astype(np.float32) / 255, options)
            seconds[precision] = time.perf_counter() - start
        for precision in args.precision:
            diff = np.abs(outputs["fp32"] - outputs[precision]) * 255
            rows.append({"image": name, "shape": list(hazy.shape), "precision": precision,
                         "max_abs_255": float(diff.max()), "mean_abs_255": float(diff.mean()),
                         "fp32_s": seconds["fp32"], "reduced_s": seconds[precision]})
            r = rows[-1]
            print(f"| {name} {hazy.shape[1]}×{hazy.shape[0]} | {precision} | {r['max_abs_255']:.2f} "
                  f"| {r['mean_abs_255']:.3f} | {r['fp32_s']:.3f} | {r['reduced_s']:.3f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "where": where, "torch": torch.__version__,
                       "model": args.model, "device": args.device, "side": args.side, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
