"""Training-step speed and peak memory of CDD-GAN, with a baseline measured in the same run.

Each configuration runs in its own process (so peak RSS is its own): build the method, one warm-up step,
then ``--steps`` timed steps on random 3-channel crops (data loading excluded: this measures the step).

The baseline ("redundant") is the same objective organised the way the public CUT/DCLGAN code runs
its passes: the identity images as separate forwards, and every contrastive feature read by an extra
encoder pass instead of being tapped from the translation and cycle passes that compute it anyway.

    python benchmarks/bench_train.py                     # the table of docs/benchmarks.md
    python benchmarks/bench_train.py --only cpu@128 --precision bf16
    python benchmarks/bench_train.py --device cuda --only paper@256 --precision fp32 bf16 fp16

On a GPU the clock is read after a synchronisation and the table adds the peak GPU memory
(``torch.cuda.max_memory_allocated``, i.e. tensors; the driver's own context comes on top).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

CASES = {  # name: (preset, crop)
    "cpu@128": ("cpu", 128),
    "paper@128": ("paper", 128),
    "paper@256": ("paper", 256),
}


def _redundant_method(config):
    """CDD-GAN with the public code's pass layout (same losses, more generator passes)."""
    from napari_cdd_dehaze.gan.methods.cdd_gan import CDDGAN, Translations

    class Redundant(CDDGAN):
        def translate(self, degraded, clean):
            layers = self.config.nce_layers
            with self._autocast():
                fake_clean, fake_degraded = self.restorer(degraded), self.degrader(clean)
                same_clean, same_degraded = self.restorer(clean), self.degrader(degraded)
                cycled_degraded, cycled_clean = self.degrader(fake_clean), self.restorer(fake_degraded)
                taps = (self.restorer.encode(degraded, layers), self.degrader.encode(clean, layers),
                        self.degrader.encode(fake_clean, layers), self.restorer.encode(fake_degraded, layers))
            return Translations(fake_clean, fake_degraded, cycled_degraded, cycled_clean, same_clean, same_degraded,
                                *taps)

    return Redundant(config)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(case: str, precision: str, variant: str, steps: int, channels_last: bool, device: str = "cpu") -> dict:
    from napari_cdd_dehaze.gan.config import preset
    from napari_cdd_dehaze.gan.methods import build_method

    name, crop = CASES[case]
    config = preset(name, crop=crop, precision=precision, device=device)
    dev = torch.device(device)
    torch.manual_seed(0)
    method = _redundant_method(config) if variant == "redundant" else build_method(config)
    method.to(dev)
    optimisers, rng = method.make_optimisers(), torch.Generator().manual_seed(0)
    scalers = ({k: torch.amp.GradScaler(dev.type) for k in optimisers} if precision == "fp16" else {})
    x = (torch.rand(config.batch_size, config.channels, crop, crop) * 2 - 1).to(dev)
    y = (torch.rand(config.batch_size, config.channels, crop, crop) * 2 - 1).to(dev)
    if channels_last:
        method.to(memory_format=torch.channels_last)
        x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    for _ in range(2 if dev.type == "cuda" else 1):  # warm-up (cuDNN picks its algorithms in the first steps)
        method.training_step(x, y, optimisers, rng, scalers)
    _sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        method.training_step(x, y, optimisers, rng, scalers)
    _sync(dev)
    seconds = (time.perf_counter() - start) / steps
    gpu_mb = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    return {"case": case, "preset": name, "crop": crop, "width": config.width, "blocks": config.blocks,
            "precision": precision, "variant": variant, "channels_last": channels_last,
            "device": str(dev), "batch_size": config.batch_size, "s_per_step": seconds, "steps_per_s": 1 / seconds,
            "peak_gpu_mb": gpu_mb,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "timed_steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument("--precision", nargs="*", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    parser.add_argument("--variants", nargs="*", default=["tapped", "redundant"], choices=["tapped", "redundant"])
    parser.add_argument("--channels-last", action="store_true", help="also measure channels-last memory format")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--json", help="write the results here as well")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one measurement, in this process
        case, precision, variant, cl = args.child.split(",")
        print(json.dumps(measure(case, precision, variant, args.steps, cl == "1", args.device)))
        return

    results = []
    layouts = [False, True] if args.channels_last else [False]
    gpu = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "no GPU"
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {args.device} ({gpu})")
    print("| case | width×blocks | batch | precision | passes | channels-last | s/step | steps/s | peak RSS MB "
          "| peak GPU MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in args.only or list(CASES):
        for precision in args.precision:
            for variant in args.variants:
                for cl in layouts:
                    child = [sys.executable, __file__, "--steps", str(args.steps), "--device", args.device,
                             "--child", f"{case},{precision},{variant},{int(cl)}"]
                    done = subprocess.run(child, capture_output=True, text=True)
                    if done.returncode != 0:  # report the case and go on with the others
                        why = (done.stderr.strip().splitlines() or ["?"])[-1]
                        print(f"| {' '.join(child[2:])} | failed: {why} |", flush=True)
                        continue
                    r = json.loads(done.stdout)
                    results.append(r)
                    gpu_mb = "–" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"
                    print(f"| {case} | {r['width']}×{r['blocks']} | {r['batch_size']} | {precision} | {variant} "
                          f"| {'yes' if cl else 'no'} | {r['s_per_step']:.3f} | {r['steps_per_s']:.3f} "
                          f"| {r['peak_rss_mb']:.0f} | {gpu_mb} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "torch": torch.__version__, "gpu": gpu,
                       "threads": torch.get_num_threads(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
