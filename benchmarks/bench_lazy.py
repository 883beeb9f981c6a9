"""A stack that is not in memory (a dask array, as behind a napari layer read lazily): peak memory of restoring it.

    python benchmarks/bench_lazy.py [--planes 8] [--side 4096] [--channels 3] [--model default] [--json FILE]

The stack is a dask array of ``--planes`` hazy float32 planes of ``--side``² (each a hazy photo tiled to that size,
made when a plane is read), as a layer opened from a zarr store or a large file would be. Each way of restoring it
runs in its own process, so that its peak RSS is its own:

* ``lazy``: what the Restore widget does with such a layer, ``restore.lazy.restore_out_of_core``: one plane read at
  a time, the result written into a memory-mapped temporary file;
* ``in memory``: the baseline, ``np.asarray`` of the whole stack, then ``restore_array`` into a new array.

Reported: the stack's size, each process's peak RSS (and the RSS before restoring: imports and model), the seconds
of the restoration, and that both give the same result (the largest difference in 1/255 steps).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def stack(planes: int, side: int, channels: int):
    import dask.array as da
    import numpy as np
    from skimage.transform import resize

    from napari_cdd_dehaze.imaging.synthesis import demo_photos, random_haze

    photo = resize(demo_photos()["motorcycle"], (side // 4, side // 4), anti_aliasing=True).astype(np.float32)
    hazy = np.clip(random_haze(photo, np.random.default_rng(0)), 0, 1).astype(np.float32)
    hazy = hazy if channels == 3 else hazy.mean(axis=-1, keepdims=True)
    tile = da.from_array(hazy, chunks=hazy.shape)
    plane = da.tile(tile, (4, 4, 1))
    plane = plane if channels == 3 else plane[..., 0]
    return da.stack([plane * np.float32(0.96 + 0.005 * i) for i in range(planes)])


def child(mode: str, planes: int, side: int, channels: int, model: str) -> None:
    import numpy as np

    from napari_cdd_dehaze.models import load_model
    from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array
    from napari_cdd_dehaze.restore.lazy import restore_out_of_core

    data, restorer, options = stack(planes, side, channels), load_model(model), RestoreOptions(device="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    start = time.perf_counter()
    if mode == "lazy":
        out = restore_out_of_core(restorer, data, options, channel_axis=-1 if channels == 3 else None)
    else:
        out = restore_array(restorer, np.asarray(data), options, channel_axis=-1 if channels == 3 else None)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    sample = np.asarray(out[planes // 2, ::97, ::89]).astype(np.float64).tolist()
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_gib": peak, "rss_before_gib": before,
                      "sample": sample}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--planes", type=int, default=8)
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3])
    parser.add_argument("--model", default="default")
    parser.add_argument("--json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.planes, args.side, args.channels, args.model)
    import numpy as np

    size = args.planes * args.side ** 2 * args.channels * 4 / 2 ** 30
    rows = []
    for mode in ("lazy", "in memory"):
        result = subprocess.run([sys.executable, __file__, "--child", mode, "--planes", str(args.planes), "--side",
                                 str(args.side), "--channels", str(args.channels), "--model", args.model],
                                capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    diff = float(np.abs(np.array(rows[0]["sample"]) - np.array(rows[1]["sample"])).max() * 255)
    print(f"# {platform.processor() or platform.machine()}, model {args.model}; a dask stack of {args.planes} × "
          f"{args.side}² × {args.channels} float32 ({size:.2f} GiB)")
    print("| mode | seconds | peak RSS | RSS before restoring |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} GiB | {r['rss_before_gib']:.2f} GiB |")
    print(f"\nlargest difference between the two (sampled pixels): {diff:.3f}/255")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "stack_gib": size, "results": rows, "max_diff_255": diff},
                      f, indent=2)


if __name__ == "__main__":
    main()
