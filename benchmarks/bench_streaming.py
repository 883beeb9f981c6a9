"""Streamed against whole-image restoration on one device: agreement and seconds, in one process.

    python benchmarks/bench_streaming.py --device cuda --sides 1024 2048 4096 --json results/streaming_gpu.json
    python benchmarks/bench_streaming.py --device cpu --sides 512

Restores one of scikit-image's photos (hazed with the sample-data recipe, resized to ``side`` on the long side)
with the bundled model whole (``tile=0``) and streamed layer by layer (``whole_max_pixels=0``), once with the
engine's defaults for the device (on a GPU the layers stay in its memory) and once with every layer in host
RAM (``stream_device_bytes=0``, the engine before it kept them on the GPU), and reports the largest and mean
difference from the whole pass in 8-bit steps and the seconds of each (each run after a warm-up of the same
size; on a GPU with the result back in host memory).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from bench_precision import hazy_photos

from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array

WAYS = {  # name: RestoreOptions fields
    "whole": {"tile": 0},
    "streamed": {"tile": None, "whole_max_pixels": 0},
    "streamed, layers in RAM": {"tile": None, "whole_max_pixels": 0, "stream_device_bytes": 0},
}


def timed(model, image: np.ndarray, options: RestoreOptions) -> tuple[np.ndarray, float]:
    restore_array(model, image, options)  # warm-up: allocator, and the GPU's algorithm choice for these sizes
    start = time.perf_counter()
    out = restore_array(model, image, options)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sides", type=int, nargs="+", default=[512])
    parser.add_argument("--photo", default="astronaut")
    parser.add_argument("--json")
    args = parser.parse_args()
    model = load_model(args.model)
    where = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
             else f"{torch.get_num_threads()} threads")
    print(f"# {platform.machine()}, {where}, torch {torch.__version__}; model {args.model}; photo {args.photo}")
    print("| size | way | seconds | MP/s | max abs diff from whole (/255) | mean abs diff (/255) |")
    print("|---|---|---|---|---|---|")
    rows = []
    for side in args.sides:
        image = hazy_photos(side)[args.photo].astype(np.float32) / 255
        whole = None
        for way, fields in WAYS.items():
            out, seconds = timed(model, image, RestoreOptions(device=args.device, **fields))
            whole = out if whole is None else whole
            diff = np.abs(out - whole) * 255
            rows.append({"shape": list(image.shape), "way": way, "seconds": seconds,
                         "mp_per_s": image.shape[0] * image.shape[1] / 1e6 / seconds,
                         "max_abs_255": float(diff.max()), "mean_abs_255": float(diff.mean())})
            r = rows[-1]
            print(f"| {image.shape[1]}×{image.shape[0]} | {way} | {seconds:.2f} | {r['mp_per_s']:.2f} "
                  f"| {r['max_abs_255']:.4f} | {r['mean_abs_255']:.5f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "where": where, "torch": torch.__version__,
                       "model": args.model, "device": args.device, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
