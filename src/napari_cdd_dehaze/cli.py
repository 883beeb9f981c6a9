"""``cdd-dehaze``: train, apply, evaluate, describe models and make demo data (a thin shell over the core)."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .gan.checkpoint import CheckpointError
from .gan.config import METHOD_PRESETS, METHODS
from .gan.data import DataError
from .gan.run_control import add_config_arguments, add_run_arguments
from .io.image_files import IMAGE_SUFFIXES
from .models import BUILTIN_MODELS

IMAGE_SUFFIX_NAMES = [s.lstrip(".") for s in IMAGE_SUFFIXES]


def _train(args: argparse.Namespace) -> int:
    from .gan.distributed import shutdown
    from .gan.run_control import build_config, config_overrides
    from .gan.trainer import Trainer

    preset_name, init = _preset_and_start(args)
    # the preset, then the --config files, then the fields given as options; a resumed run changes run control only
    config = build_config(args.out, resume=args.resume, files=args.config, overrides=config_overrides(args),
                          preset_name=preset_name)
    trainer = Trainer(config, args.degraded, args.clean, args.out, resume=args.resume, init_from=init)
    try:
        return _run_training(trainer, Path(args.out), args)
    finally:
        shutdown()  # leaves torchrun's process group, if any


def _preset_and_start(args: argparse.Namespace) -> tuple[str, str | None]:
    """The preset and start model a new run uses: ``finetune`` when it starts from a model (``--init``), ``cpu``
    when from scratch; the ``finetune`` preset without ``--init`` continues the method's bundled model (the
    dehazer for CDD-GAN, the derainer for DCD-GAN)."""
    preset_name = args.preset or ("finetune" if args.init else "cpu")
    init = args.init
    if preset_name == "finetune" and init is None and not args.resume:
        from .gan.checkpoint import BUNDLED_FOR_METHOD, bundled_model_available

        init = BUNDLED_FOR_METHOD[args.method or "cdd-gan"]
        if not bundled_model_available(init):
            raise ValueError(f"the finetune preset continues a model, and no {init!r} model is bundled with this "
                             f"installation: give --init RUN_OR_FILE (a {args.method or 'cdd-gan'} model)")
        print(f"finetuning the bundled {init} model (--init {init})", file=sys.stderr)
    return preset_name, init


def _run_training(trainer, out: Path, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .gan.run_control import run

    c, quiet = trainer.config, not trainer.is_main  # under torchrun only rank 0 reports
    if not quiet:
        print(f"training {c.method} (width {c.width}, {c.blocks} blocks, crop {c.crop}) on {trainer.device} "
              f"× {trainer.replicas.world_size} process(es) from step {trainer.step} to {c.steps}; "
              f"checkpoints in {out / 'checkpoints'}", file=sys.stderr)
    timed = c.minutes > 0  # a time budget: the bar counts seconds of it (the steps are a cap)
    if timed and not quiet:
        print(f"time budget: {c.minutes:g} min of training (or {c.steps} steps, if they come first)",
              file=sys.stderr)
    bar = (tqdm(total=round(c.minutes * 60), initial=min(round(trainer.trained_s), round(c.minutes * 60)), unit="s",
                dynamic_ncols=True, disable=quiet) if timed else
           tqdm(total=c.steps, initial=trainer.step, unit="step", dynamic_ncols=True, disable=quiet))

    def progress(event) -> None:
        if event.kind == "step":
            bar.update(min(round(event.trained_s), bar.total) - bar.n if timed else 1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in event.losses.items()
                             if k in ("critics", "gan", "nce", "cycle", "identity")}, refresh=False)

    try:  # Ctrl-C/SIGTERM: finish the step, checkpoint, exit 0; Ctrl-C twice: abort (130)
        return run(trainer, out, until=args.until, log_every=args.log_every, check_sync=args.check_sync,
                   progress=progress, say=lambda message: bar.write(message, file=sys.stderr))
    finally:
        bar.close()


def _apply(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .imaging.devices import pick_device
    from .models import load_model
    from .restore.classical import ClassicalDehazer
    from .restore.engine import RestoreOptions, with_airlight_floor
    from .restore.files import parse_bands, plan_jobs, restore_files

    if args.model and args.method:
        raise ValueError("give --model or --method, not both (--method X is the same as --model X)")
    if not (args.model or args.method):
        raise ValueError("say what to restore with: --model RUN_DIR|FILE|default, or --method dcp|cap")
    device = pick_device(args.device)
    restorer = load_model(args.model or args.method)
    if not isinstance(restorer, ClassicalDehazer):  # once, not per image: a bad value is one error, up front
        restorer = with_airlight_floor(restorer, args.airlight_floor)
    jobs = plan_jobs(args.images, args.out)
    if not jobs:
        raise ValueError(f"no images found in {', '.join(args.images)} ({', '.join(IMAGE_SUFFIX_NAMES)})")
    options = RestoreOptions(device=device, tile=args.tile, margin=args.overlap, precision=args.precision,
                             estimate_size=args.estimate_size)
    bars = []

    def progress_for(job):
        bars.append(tqdm(desc=job.source.name, leave=False))

        def progress(done: int, total: int) -> None:
            bars[-1].total = total
            bars[-1].update(done - bars[-1].n)
        return progress

    def on_file(done: int, total: int, job, status: str) -> None:
        if bars:
            bars.pop().close()
        shown = f"→ {job.target}" if status == "restored" else status.replace(f"{job.source}: ", "")
        print(f"[{done}/{total}] {job.source} {shown}", file=sys.stderr)

    bands = parse_bands(args.bands)
    report = restore_files(restorer, jobs, options, overwrite=args.overwrite, progress_for=progress_for,
                           on_file=on_file, bands=bands, nodata=args.nodata)
    print(report.summary(), file=sys.stderr)
    for _, message in report.failed:
        print(f"error: {message}", file=sys.stderr)
    if report.failed:
        print(f"error: {len(report.failed)} of {len(jobs)} image(s) failed", file=sys.stderr)
    return 1 if report.failed else 0


ESTIMATE_SIZE_HELP = ("dehazing models: long side (pixels) of the shrunk copy on which the haze is estimated before "
                      "the output is composed at full size (default: the model's own; 0 = full resolution)")
AIRLIGHT_FLOOR_HELP = ("dehazing models with a working scale: compose with at least He et al.'s airlight, dark channel "
                       "over this odd window of working-scale pixels, the model's veil kept (default: the model's own "
                       "setting; 0 = off)")


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    report = evaluate(args.paired, args.unpaired, args.method, device=args.device, tile=args.tile,
                      estimate_size=args.estimate_size, airlight_floor=args.airlight_floor,
                      log=lambda message: print(message, file=sys.stderr))
    md, js = report.write(args.out)
    print(report.summary_table())
    print(f"report: {md} and {js} ({report.seconds:.0f} s)", file=sys.stderr)
    if report.failures:
        print(f"error: {report.failures} method(s) or image(s) failed; see the report", file=sys.stderr)
    return 1 if report.failures else 0


def _synth(args: argparse.Namespace) -> int:
    from .imaging.synthesis import write_demo_folders, write_rain_demo_folders

    write = write_rain_demo_folders if args.command == "synth-rain" else write_demo_folders
    for name, folder in write(args.out, seed=args.seed).items():
        print(f"{name}: {folder}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import draw, run_demo

    clear, _, results = run_demo(args.model, tuple(args.baseline), device=args.device,
                                 log=lambda message: print(message, file=sys.stderr))
    print(f"picture: {draw(clear, results, args.out)}", file=sys.stderr)
    return 0


def _info(args: argparse.Namespace) -> int:
    from .models import describe_model

    for spec in args.models:
        print("\n".join(describe_model(spec)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export.onnx import export_model, parse_size

    out = export_model(args.model, args.out, parse_size(args.size), args.overlap, args.format)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdd-dehaze", description="Unpaired image restoration: CDD-GAN "
                                     "(dehazing) and DCD-GAN (deraining).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train or finetune on two unpaired folders")
    train.add_argument("--degraded", required=True, help="folder of degraded (e.g. hazy) images, read recursively")
    train.add_argument("--clean", required=True, help="folder of clean images of other scenes, read recursively")
    train.add_argument("--out", required=True, help="run folder: checkpoints and restorer.safetensors go here")
    train.add_argument("--method", choices=METHODS,
                       help="cdd-gan (dehazing, default) or dcd-gan (deraining)")
    presets = sorted(set().union(*METHOD_PRESETS.values()))
    train.add_argument("--preset", choices=presets,
                       help="the method's configuration preset (default: finetune with --init, else cpu; "
                            "finetune alone starts from the bundled model)")
    train.add_argument("--steps", type=int, help="total training steps")
    train.add_argument("--crop", type=int, help="crop size in pixels (multiple of 4)")
    train.add_argument("--batch-size", type=int, help="images per step and process (under torchrun, per GPU)")
    train.add_argument("--lr", type=float, help="learning rate")
    train.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    train.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")
    train.add_argument("--init", help="start from the weights of this run, checkpoint or .safetensors file, or "
                                      "\"default\" (the bundled model); its network is kept (finetuning)")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, mps")
    add_run_arguments(train)  # --config, --until, --log-every, --check-sync: as training/train.py
    add_config_arguments(train)  # --<field> for every other TrainConfig field (the ones above are kept)
    train.set_defaults(run=_train)

    apply = sub.add_parser("apply", help="restore images with a trained model")
    apply.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                       help="PNG, JPEG or TIFF files, or folders of them (read recursively)")
    apply.add_argument("--out", required=True, help="folder for the restored images: same names, relative layout, "
                                                    "shapes, dtypes and GeoTIFF tags; outputs that exist are skipped")
    apply.add_argument("--overwrite", action="store_true", help="restore again images whose output exists")
    apply.add_argument("--nodata", type=float, help="value of pixels without data (NaN allowed): left out of the "
                                                    "restoration, written back as they were (default: the value a "
                                                    "GeoTIFF declares; none otherwise)")
    apply.add_argument("--bands", metavar="R,G,B", help="for multiband images: the bands the model sees, counted from "
                                                        "1 (e.g. 4,3,2); the other bands are copied unchanged")
    apply.add_argument("--model", help="run folder, checkpoint folder or .safetensors file, or a built-in name: "
                                        + ", ".join(BUILTIN_MODELS))
    apply.add_argument("--method", help="same as --model, for the built-in methods (e.g. --method dcp)")
    apply.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    apply.add_argument("--tile", type=int, help="tile size in pixels (overlapping tiles); 0 = whole image "
                                                "(default: whole up to 2048², streamed layer by layer beyond: exact, "
                                                "bounded memory)")
    apply.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                       help="autocast precision; auto (default): bf16 for a dehazing model at its working scale on "
                            "a GPU or CPU with native bf16, fp32 elsewhere")
    apply.add_argument("--overlap", type=int, help="context margin around each tile in pixels (default: the "
                                                   "network's receptive-field radius, which makes tiles exact)")
    apply.add_argument("--estimate-size", type=int, help=ESTIMATE_SIZE_HELP)
    apply.add_argument("--airlight-floor", type=int, help=AIRLIGHT_FLOOR_HELP)
    apply.set_defaults(run=_apply)

    export = sub.add_parser("export", help="write a model as one ONNX graph (onnxruntime, QGIS Deepness) or a "
                                           "bioimage.io package (bioimageio.core, deepImageJ, ilastik, QuPath)")
    export.add_argument("--model", default="default", help="run folder, checkpoint, .safetensors file or default")
    export.add_argument("--format", choices=["onnx", "bioimageio"], default="onnx", help="default onnx")
    export.add_argument("--out", required=True, help="file to write, e.g. dehaze.onnx or dehaze.zip")
    export.add_argument("--size", metavar="N|H,W", help="fixed input size (ONNX default: dynamic for models without a "
                                                        "working scale, 512 × 512 for the others; bioimage.io: "
                                                        "512 × 512)")
    export.add_argument("--overlap", type=int, default=15, help="tile overlap in percent for tiling tools such as "
                                                                "QGIS Deepness (written in the metadata; default 15)")
    export.set_defaults(run=_export)

    info = sub.add_parser("info", help="what a model is: its network, how it runs, where it comes from")
    info.add_argument("models", nargs="+", help="built-in name (default, dcp, cap) or trained model path")
    info.set_defaults(run=_info)

    ev = sub.add_parser("eval", help="score methods on paired (hazy/clear) and unpaired folders; Markdown + JSON "
                                     "report")
    ev.add_argument("--paired", nargs="+", action="extend", default=[], metavar="DIR",
                    help="folders holding hazy/ (or rainy/, degraded/) and clear/ (or clean/) with matching "
                         "file names")
    ev.add_argument("--unpaired", nargs="+", action="extend", default=[], metavar="DIR",
                    help="folders of hazy images without ground truth (read recursively)")
    ev.add_argument("--method", nargs="+", action="extend", required=True, metavar="METHOD",
                    help="built-in names (" + ", ".join(BUILTIN_MODELS) + ") or trained model paths")
    ev.add_argument("--out", required=True, help="folder for report.md and report.json")
    ev.add_argument("--device", default="auto", help="for learned models: auto (default), cpu, cuda, mps")
    ev.add_argument("--tile", type=int, help="tile size for learned models (default as in apply)")
    ev.add_argument("--estimate-size", type=int, help=ESTIMATE_SIZE_HELP)
    ev.add_argument("--airlight-floor", type=int, help=AIRLIGHT_FLOOR_HELP)
    ev.set_defaults(run=_eval)

    demo = sub.add_parser("demo", help="restore a synthetic hazy scene with a model and classical baselines; "
                                       "write a side-by-side picture and print each PSNR (no input, no display)")
    demo.add_argument("--out", default="demo.png", help="picture to write (default demo.png)")
    demo.add_argument("--model", default="default", help="model to show (default: the bundled one)")
    demo.add_argument("--baseline", nargs="*", default=["dcp", "cap"], help="classical methods beside it")
    demo.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    demo.set_defaults(run=_demo)

    synth = sub.add_parser("synth-haze", help="write a small unpaired hazy/clean demo set from scikit-image photos")
    synth.add_argument("out", help="folder to create (degraded/, clean/, test/hazy, test/clear)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=_synth)

    rain = sub.add_parser("synth-rain", help="write a small unpaired rainy/clean demo set from scikit-image photos")
    rain.add_argument("out", help="folder to create (degraded/, clean/, test/rainy, test/clear)")
    rain.add_argument("--seed", type=int, default=0)
    rain.set_defaults(run=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
            return args.run(args)
    except (DataError, CheckpointError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
