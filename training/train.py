"""Train a restorer from a YAML recipe — the same engine as `cdd-dehaze train` and the napari widget.

    python training/train.py --config training/configs/cpu.yaml \
        --degraded DATA/hazy --clean DATA/clear --out runs/cpu [--resume]

Read top to bottom: config → engine (data, networks, optimisers) → loop of events → final model.
Multi-GPU (torchrun/DDP) comes with the distributed engine; this script runs one process.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from napari_cdd_dehaze.config import TrainConfig
from napari_cdd_dehaze.trainer import Trainer, resume_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file of TrainConfig fields")
    parser.add_argument("--degraded", required=True)
    parser.add_argument("--clean", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")
    parser.add_argument("--init", help="start from these weights (finetuning)")
    parser.add_argument("--log-every", type=int, default=10)
    args = parser.parse_args()

    # 1. config: the recipe file, validated once; a resumed run keeps its saved config (steps may grow)
    recipe = yaml.safe_load(Path(args.config).read_text()) or {}
    config = TrainConfig.from_dict(recipe)
    if args.resume:
        config = resume_config(args.out, steps=config.steps)

    # 2. engine: data is checked before any network is built
    trainer = Trainer(config, args.degraded, args.clean, args.out, resume=args.resume, init_from=args.init)
    print(f"{config.method}: width {config.width}, {config.blocks} blocks, crop {config.crop}, "
          f"device {trainer.device}, steps {trainer.step}→{config.steps}", flush=True)

    # 3. loop: one line every --log-every steps, and one per checkpoint
    Path(args.out).mkdir(parents=True, exist_ok=True)
    log = Path(args.out) / "losses.csv"
    new_log = not log.exists() or not args.resume
    with open(log, "w" if new_log else "a") as csv:
        start = time.time()
        for event in trainer.events():
            if event.kind == "step":
                if new_log:
                    csv.write("step,seconds," + ",".join(event.losses) + "\n")
                    new_log = False
                csv.write(f"{event.step},{time.time() - start:.1f}," + ",".join(f"{v:.5f}" for v in event.losses.values())
                          + "\n")
                if event.step % args.log_every == 0:
                    losses = " ".join(f"{k} {v:.3f}" for k, v in event.losses.items())
                    print(f"step {event.step}/{event.total} {event.steps_per_s:.2f} steps/s "
                          f"eta {event.eta_s / 60:.1f} min | {losses}", flush=True)
            else:
                print(f"{event.kind} at step {event.step}: {event.checkpoint}", flush=True)

    # 4. the model to ship
    print(f"model: {Path(args.out) / 'restorer.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
