"""Does bf16 autocast train the same model as fp32, and how much faster? Loss curves and seconds per step.

    python benchmarks/bench_train_precision.py [--preset cpu] [--method cdd-gan] [--steps 300] [--json FILE]

Trains the preset on the demo folders (:func:`~napari_cdd_dehaze.imaging.synthesis.write_demo_folders`: hazy and
clear halves of other scenes) three times from the same start: fp32 with seed 0, fp32 with seed 1, bf16 with
seed 0. The two fp32 runs differ only by their seed, so their gap is the noise of a loss curve; bf16 trains the
same curve when its gap to fp32 (same seed) is no larger. Reported per loss: the mean over the second half of
the steps in each run, the bf16 gap and the seed gap; and each run's seconds per step (data loading included, as in
a user's run). Run it with nothing else busy on the machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_cdd_dehaze.gan.config import preset
from napari_cdd_dehaze.gan.trainer import Trainer
from napari_cdd_dehaze.imaging.devices import native_bf16
from napari_cdd_dehaze.imaging.synthesis import write_demo_folders

RUNS = (("fp32", 0), ("fp32", 1), ("bf16", 0))


def loss_curve(config, degraded: Path, clean: Path, out: Path) -> tuple[dict[str, np.ndarray], float]:
    """Each loss at every step, and the seconds per step after the first (which builds the kernels)."""
    rows, stamps = [], []
    for event in Trainer(config, degraded, clean, out).events():
        if event.kind == "step":
            rows.append(event.losses)
            stamps.append(time.perf_counter())
    per_step = (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)
    return {name: np.array([row[name] for row in rows]) for name in rows[0]}, per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--method", default="cdd-gan", choices=["cdd-gan", "dcd-gan"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    curves, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_demo_folders(Path(tmp) / "data")
        for precision, seed in RUNS:
            config = preset(args.preset, method=args.method, precision=precision, seed=seed, steps=args.steps,
                            device=args.device, minutes=0.0, checkpoint_every=10 ** 9)
            curves[precision, seed], seconds[precision, seed] = loss_curve(
                config, folders["degraded"], folders["clean"], Path(tmp) / f"{precision}-{seed}")
    half = args.steps // 2
    means = {run: {name: float(values[half:].mean()) for name, values in curve.items()}
             for run, curve in curves.items()}
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, native bf16: {native_bf16(device)}; {args.method} preset {args.preset}, "
          f"{args.steps} steps, means over steps {half + 1}–{args.steps}")
    print("| loss | fp32 seed 0 | fp32 seed 1 | bf16 seed 0 | bf16 gap | seed gap |")
    print("|---|---|---|---|---|---|")
    for name in means["fp32", 0]:
        a, b, c = (means[run][name] for run in RUNS)
        print(f"| {name} | {a:.4f} | {b:.4f} | {c:.4f} | {abs(c - a):.4f} | {abs(b - a):.4f} |")
    print(f"\ns/step: fp32 {seconds['fp32', 0]:.3f} and {seconds['fp32', 1]:.3f}, bf16 {seconds['bf16', 0]:.3f} "
          f"({seconds['fp32', 0] / seconds['bf16', 0]:.2f}× faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "native_bf16": native_bf16(device), "preset": args.preset, "method": args.method,
                       "steps": args.steps, "means": {f"{p}-{s}": m for (p, s), m in means.items()},
                       "seconds_per_step": {f"{p}-{s}": v for (p, s), v in seconds.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
