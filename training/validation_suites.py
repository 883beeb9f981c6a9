"""Score models on every validation suite the bundled model is chosen by, in one report (never on evaluation sets).

    python training/validation_suites.py --pairs DATA/val --depth SHARED/train/depth --out runs/suites \\
        --method default dcp cap runs/a/restorer.safetensors runs/b/restorer.safetensors

Six kinds of suite, each a folder of pairs written under ``--out`` (deterministic for a given ``--seed``) and scored by
the library's own ``evaluate`` (PSNR / SSIM / CIEDE2000, Markdown and JSON, as ``cdd-dehaze eval``):

* ``val``: the paired validation set as it is (``make_hazy_set.py --holdout``: the training synthesis on
  photos no run trains on);
* ``fixed-B``: the first ``--count`` clear photos of that set hazed at one density β = B each (``add_haze`` with
  the depth prior, airlight 0.75–1.0 with a ±0.04 tint): how a model does from light to dense haze;
* ``airlight-A``: the same photos at one density (``--airlight-beta``) under one grey airlight A: whether a
  model's airlight follows the image or sticks to the middle of the range it was trained on. For every learned
  restorer with one pooled airlight, ``airlight_read.md`` also says which airlight it reads on each of these
  suites (mean ± spread over the photos), at its working scale: a reader that follows the veil reads A;
* ``dim-D``: the same photos at ``--dim-beta``, their light scaled by D before the haze (a scene lit D times as
  brightly under the same veil, as indoors): whether a model reads the haze level apart from the scene's
  brightness (restorers that do not keep more haze the darker the scene is);
* ``flat-B``: the same photos at density B with no clear foreground (``lift_nearest``: the nearest point at
  ``--flat-nearest`` of the far one, drawn per photo), as in a room, from the air or into a fog bank: haze that
  lies almost evenly over the frame, where the dark channel prior is at its best;
* ``depth-B``: scenes with measured depth (``<scene>/rgb.png`` and ``depth_mm.png``, e.g. the Middlebury
  scenes) hazed at density B from that depth: real depth edges. These scenes are also in the
  training set's degraded domain (hazed with other draws), so this suite measures depth edges, not novelty.

Why several: a candidate's gain on ``val`` alone does not always carry over to held-out evaluation sets
(docs/model-card.md); a change that loses on a suite is worth knowing before that check.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from make_hazy_set import to_u8, unit_rgb  # the training set's own conversions (this folder)

from napari_cdd_dehaze.evaluate import evaluate
from napari_cdd_dehaze.gan.data import list_images
from napari_cdd_dehaze.gan.networks import ResnetGenerator
from napari_cdd_dehaze.imaging.synthesis import add_haze, depth_prior, lift_nearest, measured_depth, random_airlight
from napari_cdd_dehaze.io.image_files import read_image, write_image
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.restore.working_scale import haze_at_working_scale


def write_pair(folder: Path, name: str, hazy: np.ndarray, clear: np.ndarray) -> None:
    for part, image in (("hazy", hazy), ("clear", clear)):
        (folder / part).mkdir(parents=True, exist_ok=True)
        write_image(folder / part / name, to_u8(image))


def photo_suite(photos: list[np.ndarray], folder: Path, beta: float, seed: int,
                grey_airlight: float | None = None, nearest: tuple[float, float] | None = None) -> Path:
    """``photos`` hazed at density ``beta`` into ``folder``: random airlights (0.75–1.0, tinted) or one grey
    value; with ``nearest``, the depth prior lifted so its nearest point lies in that range of the far one. The
    same seed gives the same depth priors whatever the density, airlight or lift, so suites differ in those
    alone."""
    rng, lift_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    for index, clear in enumerate(photos):
        airlight = random_airlight(rng, (0.75, 1.0))
        if grey_airlight is not None:
            airlight = (grey_airlight,) * 3
        depth = depth_prior(clear, rng)
        if nearest is not None:
            depth = lift_nearest(depth, lift_rng.uniform(*nearest))
        write_pair(folder, f"{index:03d}.png", add_haze(clear, depth, beta, airlight), clear)
    return folder


def measured_depth_suites(depth_dir: Path, out: Path, betas: list[float], seed: int) -> list[Path]:
    """``out/depth-B``: every ``<scene>/rgb.png`` of ``depth_dir`` hazed at density B from its ``depth_mm.png``."""
    folders = sorted(p for p in depth_dir.iterdir() if (p / "rgb.png").is_file() and (p / "depth_mm.png").is_file())
    if not folders:
        raise SystemExit(f"{depth_dir}: no <scene>/rgb.png with depth_mm.png beside it")
    scenes = [(p.name, unit_rgb(read_image(p / "rgb.png")), measured_depth(read_image(p / "depth_mm.png")))
              for p in folders]  # read once, hazed at every density
    suites = []
    for beta in betas:
        rng, suite = np.random.default_rng(seed), out / f"depth-{beta:g}"
        for name, clear, depth in scenes:
            hazy = add_haze(clear, depth, beta, random_airlight(rng, (0.7, 1.0)))
            write_pair(suite, f"{name}.png", hazy, clear)
        suites.append(suite)
    return suites


def airlights_read(methods: list[str], suites: dict[float, Path]) -> dict[str, dict[str, list[float]]]:
    """Per restorer with one pooled airlight: the airlight it reads on each ``airlight-A`` suite, per image."""
    read = {}
    for method in methods:
        try:
            model = load_model(method)
        except Exception:  # noqa: BLE001 — the evaluation above already reported a model that does not load
            continue
        if not (isinstance(model, ResnetGenerator) and model.config.pool_airlight):
            continue
        read[method] = {}
        for airlight, folder in suites.items():
            values = []
            for path in list_images(folder / "hazy"):
                unit = unit_rgb(read_image(path))
                x = torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1)))[None].float() * 2 - 1
                values.append(float(haze_at_working_scale(model, x)[1].mean()))
            read[method][f"{airlight:g}"] = values
    return read


def airlight_table(read: dict[str, dict[str, list[float]]]) -> str:
    if not read:
        return "No learned restorer with one pooled airlight among the methods.\n"
    suites = list(next(iter(read.values())))
    lines = ["| method | " + " | ".join(f"A = {a}" for a in suites) + " |", "|---" * (len(suites) + 1) + "|"]
    for method, by_suite in read.items():
        cells = [f"{np.mean(v):.3f} ± {np.std(v):.3f}" for v in by_suite.values()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True, help="paired validation folder (hazy/, clear/)")
    parser.add_argument("--depth", help="folder of <scene>/{rgb.png,depth_mm.png} (measured depth); none: no suite")
    parser.add_argument("--out", required=True, help="where the suites' pairs and the report are written")
    parser.add_argument("--method", nargs="+", required=True, help="as cdd-dehaze eval: default, dcp, cap, a path")
    parser.add_argument("--betas", type=float, nargs="*", default=[0.2, 0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--depth-betas", type=float, nargs="*", default=[0.6, 2.0])
    parser.add_argument("--airlights", type=float, nargs="*", default=[0.7, 1.0],
                        help="grey airlights of the airlight-A suites (the fixed-density photos at --airlight-beta)")
    parser.add_argument("--airlight-beta", type=float, default=1.5)
    parser.add_argument("--dims", type=float, nargs="*", default=[0.5],
                        help="light factors of the dim-D suites (the fixed-density photos, scaled, at --dim-beta)")
    parser.add_argument("--dim-beta", type=float, default=1.0)
    parser.add_argument("--flat-betas", type=float, nargs="*", default=[1.0, 2.0],
                        help="densities of the flat-B suites (the fixed-density photos without a clear foreground)")
    parser.add_argument("--flat-nearest", type=float, nargs=2, default=(0.5, 0.9), metavar=("MIN", "MAX"),
                        help="where the nearest point of a flat-B suite's depth lies, as a fraction of the far one")
    parser.add_argument("--count", type=int, default=12, help="photos of the fixed-density suites")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    out, pairs = Path(args.out), Path(args.pairs)
    photos = [unit_rgb(read_image(p)) for p in list_images(pairs / "clear")[:args.count]]
    folders = [pairs] + [photo_suite(photos, out / "suites" / f"fixed-{beta:g}", beta, args.seed)
                         for beta in args.betas]
    airlight_suites = {a: photo_suite(photos, out / "suites" / f"airlight-{a:g}", args.airlight_beta, args.seed, a)
                       for a in args.airlights}
    folders += list(airlight_suites.values())
    folders += [photo_suite([photo * dim for photo in photos], out / "suites" / f"dim-{dim:g}", args.dim_beta,
                            args.seed) for dim in args.dims]
    folders += [photo_suite(photos, out / "suites" / f"flat-{beta:g}", beta, args.seed, nearest=args.flat_nearest)
                for beta in args.flat_betas]
    if args.depth:
        folders += measured_depth_suites(Path(args.depth), out / "suites", args.depth_betas, args.seed)
    report = evaluate(folders, [], args.method, device=args.device, tile=0, log=lambda message: None)
    report.write(out / "report")
    print(report.summary_table())
    read = airlights_read(args.method, airlight_suites)
    table = ("# The airlight each restorer reads\n\nMean ± standard deviation over the photos of each "
             f"`airlight-A` suite (β {args.airlight_beta:g}, grey airlight A) of the one grey airlight the restorer "
             "composes with, estimated at its working scale.\n\n" + airlight_table(read))
    (out / "report" / "airlight_read.md").write_text(table)
    (out / "report" / "airlight_read.json").write_text(json.dumps(read, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
