"""Train a restorer from a YAML recipe — the same engine as `cdd-dehaze train` and the napari widget.

    # one process (CPU, one GPU)
    python training/train.py --config training/configs/cpu.yaml \
        --degraded DATA/hazy --clean DATA/clear --out runs/cpu [--resume]
    # several GPUs on one machine (data-parallel; batch_size is per GPU)
    torchrun --standalone --nproc_per_node=4 training/train.py --config training/configs/paper.yaml ...

Read top to bottom: config → engine (data, networks, optimisers; joins torchrun's process group if
launched by it) → loop of events (rank 0 logs) → final model. See training/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

import yaml

from napari_cdd_dehaze.gan.checkpoint import CheckpointError
from napari_cdd_dehaze.gan.config import TrainConfig
from napari_cdd_dehaze.gan.data import DataError
from napari_cdd_dehaze.gan.distributed import shutdown
from napari_cdd_dehaze.gan.trainer import RUN_CONTROL_FIELDS, Trainer, resume_config


def train() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, nargs="+",
                        help="YAML file(s) of TrainConfig fields; a later file overrides an earlier one")
    parser.add_argument("--degraded", required=True)
    parser.add_argument("--clean", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")
    parser.add_argument("--init", help="start from these weights (finetuning)")
    parser.add_argument("--until", type=int, default=0, metavar="STEP",
                        help="stop after this step with a checkpoint and the restorer file, as Ctrl-C does "
                             "(a run in stages; continue with --resume)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--check-sync", type=int, default=0, metavar="N",
                        help="every N steps, verify that all ranks hold bit-identical weights (0: never)")
    args = parser.parse_args()

    # 1. config: the recipe file, validated once; a resumed run keeps its saved config except the
    #    run-control fields the recipe names (steps, checkpoint cadence, device, the per-process
    #    batch_size, e.g. to keep the global batch on fewer GPUs, and the weightless composition fields
    #    such as airlight_floor: trainer.RUN_CONTROL_FIELDS)
    recipe = {}
    for file in args.config:
        recipe.update(yaml.safe_load(Path(file).read_text()) or {})
    config = TrainConfig.from_dict(recipe)
    if args.resume:
        config = resume_config(args.out, **{k: getattr(config, k) for k in RUN_CONTROL_FIELDS if k in recipe})

    # 2. engine: data is checked before any network is built; under torchrun this joins the process group
    trainer = Trainer(config, args.degraded, args.clean, args.out, resume=args.resume, init_from=args.init)
    world = trainer.replicas.world_size
    say = print if trainer.is_main else (lambda *a, **k: None)  # only rank 0 talks and writes the log
    say(f"{config.method}: width {config.width}, {config.blocks} blocks, crop {config.crop}, {config.precision}, "
        f"{world} process(es) × batch {config.batch_size} on {trainer.device}, steps {trainer.step}→{config.steps}",
        flush=True)

    # Ctrl-C or SIGTERM (a scheduler's warning): finish the step, agree across ranks, save, exit.
    # Under torchrun a rank gets Ctrl-C twice (from the terminal and from the launcher), so only a lone
    # process takes a second one as "abort now"; torchrun itself kills workers 30 s after its first.
    def stop_after_this_step(signum, frame):
        say("stopping after this step and saving a checkpoint (continue with --resume)", flush=True)
        trainer.request_stop()
        if not trainer.replicas.active:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGINT, stop_after_this_step)
    signal.signal(signal.SIGTERM, stop_after_this_step)

    # 3. loop: every step's losses (mean over ranks) to losses.csv; one line every --log-every steps
    log = Path(args.out) / "losses.csv"
    new_log = not log.exists() or not args.resume
    if trainer.is_main:
        log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w" if new_log else "a") if trainer.is_main else contextlib.nullcontext() as csv:
        for event in trainer.events():
            if event.kind == "step":
                if args.until and event.step >= args.until:
                    trainer.request_stop()  # every rank sees the same step, so all stop after it
                if args.check_sync and event.step % args.check_sync == 0:
                    if not trainer.replicas_identical():  # every rank computes it: it is a collective
                        raise RuntimeError(f"replicas differ after step {event.step}")
                    say(f"step {event.step}: weights identical on {world} rank(s)", flush=True)
                if csv is not None:
                    if new_log:
                        csv.write("step,seconds," + ",".join(event.losses) + "\n")
                        new_log = False
                    csv.write(f"{event.step},{time.time() - start:.1f},"
                              + ",".join(f"{v:.5f}" for v in event.losses.values()) + "\n")
                    csv.flush()
                if event.step % args.log_every == 0:
                    losses = " ".join(f"{k} {v:.3f}" for k, v in event.losses.items())
                    say(f"step {event.step}/{event.total} {event.steps_per_s:.2f} steps/s "
                        f"eta {event.eta_s / 60:.1f} min | {losses}", flush=True)
            else:
                say(f"{event.kind} at step {event.step}: {event.checkpoint}", flush=True)

    # 4. the model to ship
    say(f"model: {Path(args.out) / 'restorer.safetensors'}")
    shutdown()
    return 0


def main() -> int:
    """Bad recipes, folders and checkpoints end with one line, not a traceback (on every rank alike)."""
    try:
        return train()
    except (DataError, CheckpointError, ValueError, FileNotFoundError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        shutdown()
        return 2


if __name__ == "__main__":
    sys.exit(main())
