"""Data-parallel training speed: the same recipe under ``torchrun`` with 1 and with N processes.

Each run is ``training/train.py`` launched by ``python -m torch.distributed.run --standalone`` on the
demo folders of ``cdd-dehaze synth-haze`` (real data loading included), with the CPU threads split
evenly among the processes. Speed comes from the ``seconds`` column of the run's ``losses.csv``,
skipping the first ``--warmup`` steps; peak RSS is the largest of any one process (ru_maxrss of
the children), i.e. memory *per process*.

    python benchmarks/bench_ddp.py --preset cpu --crop 128 --steps 20 --processes 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
PEAK_OF_CHILDREN = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
                    "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def run(processes: int, recipe: dict, folders: dict, work: Path, threads: int, warmup: int) -> dict:
    out = work / f"run-{processes}"
    config = work / f"recipe-{processes}.yaml"
    config.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(max(1, threads // processes))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(ROOT / "training" / "train.py"), "--config", str(config), "--degraded", str(folders["degraded"]),
               "--clean", str(folders["clean"]), "--out", str(out), "--log-every", "1000000"]
    # A fresh parent per run, so that its children's ru_maxrss is this run's alone.
    done = subprocess.run([sys.executable, "-c", PEAK_OF_CHILDREN, *command], check=True, env=env,
                          capture_output=True, text=True)
    peak_kb = int(done.stdout.split()[-1])
    rows = [line.split(",") for line in (out / "losses.csv").read_text().splitlines()[1:]]
    seconds = [float(r[1]) for r in rows]
    timed = len(seconds) - 1 - warmup
    rate = timed / (seconds[-1] - seconds[warmup])
    return {"processes": processes, "threads_per_process": max(1, threads // processes),
            "global_batch": processes * recipe["batch_size"], "timed_steps": timed, "steps_per_s": rate,
            "images_per_s": rate * processes * recipe["batch_size"],
            "peak_rss_mb_per_process": peak_kb / 1024}


def main() -> int:
    from napari_cdd_dehaze.gan.config import preset
    from napari_cdd_dehaze.imaging.synthesis import write_demo_folders

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1, help="per process")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared by the processes")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    recipe = preset(args.preset, crop=args.crop, steps=args.steps, batch_size=args.batch_size, device="cpu",
                    checkpoint_every=10 ** 9).to_dict()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_demo_folders(Path(tmp) / "data")
        for n in args.processes:
            result = run(n, recipe, folders, Path(tmp), args.threads, args.warmup)
            results.append(result)
            print(json.dumps(result), flush=True)
    info = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "preset": args.preset,
            "crop": args.crop, "load": os.getloadavg(), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
