"""Dehazing at the model's working scale against the full-resolution pass: seconds, megapixels/s, peak RSS.

The bundled model on a photo that ships with scikit-image, enlarged to each side by repeating pixels (content
barely matters for speed; the enlargement stays uint8, so the peak RSS is the restoration's). Each case runs in
its own process so that its peak RSS is its own; the full-resolution pass is the engine's default (whole up to
2048², streamed layer by layer beyond), the working scale is ``RestoreOptions.estimate_size``
(``working_scale.py``).

    python benchmarks/bench_working_scale.py                       # 1024, 4096 (both ways) and 8192
    python benchmarks/bench_working_scale.py --sides 1024 --json out.json
    python benchmarks/bench_working_scale.py --full-max 0 --model OTHER.safetensors   # the working scale only
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def child(side: int, estimate_size: int, device: str, model_spec: str) -> dict:
    import numpy as np
    import torch
    from skimage import data

    from napari_cdd_dehaze.models import load_model
    from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array

    torch.set_num_threads(torch.get_num_threads())
    k = -(-side // 512)  # nearest-neighbour enlargement in uint8: no float copy of the image in the peak RSS
    photo = np.ascontiguousarray(np.repeat(np.repeat(data.astronaut(), k, 0), k, 1)[:side, :side])
    model = load_model(model_spec)
    options = RestoreOptions(device=device, estimate_size=estimate_size)
    start = time.perf_counter()
    out = restore_array(model, photo, options)
    seconds = time.perf_counter() - start
    return {"side": side, "estimate_size": estimate_size, "seconds": round(seconds, 2),
            "mp_per_s": round(side * side / 1e6 / seconds, 2), "checksum": int(out[::97, ::89].sum()),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", nargs="*", type=int, default=[1024, 4096, 8192])
    parser.add_argument("--estimate-size", type=int, default=128, help="working scale to compare (default 128)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="default", help="the model to run (default: the bundled one)")
    parser.add_argument("--full-max", type=int, default=4096,
                        help="run the full-resolution pass only up to this side (default 4096: 8192² takes "
                             "about 14 minutes on 2 CPU cores)")
    parser.add_argument("--json", help="write the results here as well")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.device, args.model)))
        return
    rows = []
    print(f"# {platform.processor() or platform.machine()}, {platform.python_version()}, device {args.device}, "
          f"model {args.model}")
    print("| side | full resolution: s (MP/s, peak RSS GB) | working scale: s (MP/s, peak RSS GB) | speed-up |")
    print("|---|---|---|---|")
    for side in args.sides:
        pair = []
        for size in ((0,) if side <= args.full_max else ()) + (args.estimate_size,):
            done = subprocess.run([sys.executable, __file__, "--child", str(side), str(size), "--device", args.device,
                                   "--model", args.model], capture_output=True, text=True, check=True)
            pair.append(json.loads(done.stdout.strip().splitlines()[-1]))
        rows += pair
        small = pair[-1]
        cells = [f"{r['seconds']} ({r['mp_per_s']}, {r['peak_rss_gb']})" for r in pair]
        full, speedup = "not run", ""
        if len(pair) == 2:
            full, speedup = cells[0], f"{pair[0]['seconds'] / small['seconds']:.0f}×"
        print(f"| {side}² | {full} | {cells[-1]} | {speedup} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "model": args.model, "machine": platform.platform(), "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
