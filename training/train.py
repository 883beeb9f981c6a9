"""Train a restorer from a YAML recipe — the same engine as `cdd-dehaze train` and the napari widget.

    # one process (CPU, one GPU)
    python training/train.py --config training/configs/cpu.yaml \
        --degraded DATA/hazy --clean DATA/clear --out runs/cpu [--resume]
    # several GPUs on one machine (data-parallel; batch_size is per GPU)
    torchrun --standalone --nproc_per_node=4 training/train.py --config training/configs/paper.yaml ...
    # later files override earlier ones, fields given as options override the files; --until stops a stage
    python training/train.py --config training/configs/default.yaml training/configs/default-start.yaml \
        --steps 300 --lr 1e-4 --until 100 ...

Read top to bottom: config → engine (data, networks, optimisers; joins torchrun's process group if
launched by it) → loop of events (rank 0 logs) → final model. See docs/training.md. The run control
(signals, losses.csv, --until, recipe files and options, resume rules) is napari_cdd_dehaze.gan.run_control,
which `cdd-dehaze train` shares.
"""
from __future__ import annotations

import argparse
import sys

from napari_cdd_dehaze.gan.checkpoint import CheckpointError
from napari_cdd_dehaze.gan.data import DataError
from napari_cdd_dehaze.gan.distributed import shutdown
from napari_cdd_dehaze.gan.run_control import (
    add_config_arguments,
    add_run_arguments,
    build_config,
    config_overrides,
    run,
)
from napari_cdd_dehaze.gan.trainer import Trainer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--degraded", required=True)
    parser.add_argument("--clean", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")
    parser.add_argument("--init", help="start from these weights (finetuning)")
    add_run_arguments(parser, config_required=True, log_every=10)  # --config, --until, --log-every, --check-sync
    add_config_arguments(parser)  # --steps 300 --lr 1e-4 ...: any TrainConfig field, over the files
    return parser


def train(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    # 1. config: the recipe files in order, then the fields given as options, validated once; a resumed run keeps
    #    its saved config except the run-control fields (steps, checkpoint cadence, device, the per-process
    #    batch_size, e.g. to keep the global batch on fewer GPUs, and the weightless composition fields such as
    #    airlight_floor: trainer.RUN_CONTROL_FIELDS); an option naming any other field is an error there
    config = build_config(args.out, resume=args.resume, files=args.config, overrides=config_overrides(args))

    # 2. engine: data is checked before any network is built; under torchrun this joins the process group
    trainer = Trainer(config, args.degraded, args.clean, args.out, resume=args.resume, init_from=args.init)
    say = print if trainer.is_main else (lambda *a, **k: None)  # only rank 0 talks and writes the log
    say(f"{config.method}: width {config.width}, {config.blocks} blocks, crop {config.crop}, {config.precision}, "
        f"{trainer.replicas.world_size} process(es) × batch {config.batch_size} on {trainer.device}, "
        f"steps {trainer.step}→{config.steps}", flush=True)

    # 3. loop (run_control.run): every step's losses (mean over ranks) to losses.csv, a line every --log-every
    #    steps; Ctrl-C or SIGTERM (a scheduler's warning) finish the step, agree across ranks, save and exit 0,
    #    as --until STEP does; 4. the model to ship is RUN/restorer.safetensors
    return run(trainer, args.out, until=args.until, log_every=args.log_every, check_sync=args.check_sync)


def main(argv: list[str] | None = None) -> int:
    """Bad recipes, folders and checkpoints end with one line, not a traceback (on every rank alike)."""
    try:
        return train(argv)
    except (DataError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()  # leaves torchrun's process group, if any


if __name__ == "__main__":
    sys.exit(main())
