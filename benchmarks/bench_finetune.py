"""Finetuning on a user's domain: restoration quality against training time, with the baselines in the same run.

A domain is a folder the way a user has one, plus a small paired set for measuring only::

    DOMAIN/train/degraded/   hazy images            (unpaired)
    DOMAIN/train/clean/      clean images of other scenes
    DOMAIN/val/hazy|degraded/ + DOMAIN/val/clear|clean/   pairs with the same file names (never trained on)

For each domain the script finetunes the start model (default: the bundled one) with the ``finetune`` preset for
the longest budget and saves the restorer each time a budget's training time is reached. The preset's learning rate
is constant, so the snapshot at *t* minutes is the model a run with a budget of *t* minutes ends with. Then it scores
the hazy input, DCP, CAP, the start model and every snapshot on ``val/`` (PSNR, SSIM, CIEDE2000 through
``napari_cdd_dehaze.evaluate``, as ``cdd-dehaze eval`` does) and writes ``results.json``, ``table.md`` and
``quality.png`` (PSNR and ΔE00 against minutes) into ``--out``.

    python benchmarks/bench_finetune.py --domain DOMAIN --budgets 2 5 10 20 --out OUT
    python benchmarks/bench_finetune.py --make-micrographs DIR     # build the micrograph domain, then --domain DIR
    python benchmarks/bench_finetune.py --domain DOMAIN --step-budgets 100 300 1000 --device cuda   # a GPU: steps

The micrograph domain is made from the micrographs that ship with scikit-image (``cell``, ``ihc`` as grey and as
its haematoxylin/DAB stains) and synthetic fluorescence fields, veiled with the out-of-focus
model of the package's sample micrograph (``add_out_of_focus_background``) at random strengths, with 12-bit shot
noise. Each source image is cut into three bands: the first gives ``train/degraded`` tiles (veiled), the second
``train/clean`` tiles (as they are), the third the ``val`` pairs, so no region is in two of them.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

TILE = 256


# ---------------------------------------------------------------------------------------------- micrographs
def _sources() -> dict[str, np.ndarray]:
    """Grey micrographs in [0, 1]: scikit-image's and synthetic fluorescence fields."""
    from scipy.ndimage import gaussian_filter
    from skimage import color, data

    ihc = data.immunohistochemistry() / 255.0
    hed = color.rgb2hed(ihc)
    stain = lambda c: np.clip((c - c.min()) / (np.percentile(c, 99.8) - c.min()), 0, 1)
    sources = {"cell": data.cell() / 255.0, "ihc": color.rgb2gray(ihc), "haematoxylin": 1 - stain(hed[..., 0]),
               "dab": 1 - stain(hed[..., 2])}
    for seed in range(4):  # nuclei-like blobs with texture, as a widefield fluorescence field
        rng = np.random.default_rng(seed)
        blobs = data.binary_blobs(768, blob_size_fraction=0.03 + 0.02 * seed, volume_fraction=0.25, rng=seed)
        texture = 0.6 + 0.4 * gaussian_filter(rng.random((768, 768)), 6)
        field = gaussian_filter(blobs.astype(float), 2 + seed) * texture
        sources[f"fluorescence{seed}"] = np.clip(field / np.percentile(field, 99.5), 0, 1)
    return {name: image.astype(np.float32) for name, image in sources.items()}


def _veil(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from napari_cdd_dehaze.imaging.synthesis import add_out_of_focus_background

    hazy = add_out_of_focus_background(clean, strength=rng.uniform(0.45, 0.8), sigma=rng.uniform(15, 40),
                                       offset=rng.uniform(0.03, 0.12))
    return rng.poisson(hazy * 4095).clip(0, 4095) / 4095  # 12-bit shot noise, as the sample micrograph has


def make_micrograph_domain(out: Path, seed: int = 0) -> dict[str, int]:
    """Write the micrograph domain (module docstring) as 16-bit PNGs; returns the file count of each folder."""
    from napari_cdd_dehaze.io.image_files import write_image

    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}

    def save(folder: str, name: str, image: np.ndarray) -> None:
        write_image(out / folder / f"{name}.png", np.rint(np.clip(image, 0, 1) * 65535).astype(np.uint16))
        counts[folder] = counts.get(folder, 0) + 1

    for name, image in _sources().items():
        h, w = image.shape
        bands = [image[:, i * w // 3:(i + 1) * w // 3] for i in range(3)] if w >= h else \
            [image[i * h // 3:(i + 1) * h // 3] for i in range(3)]
        for role, band in zip(("degraded", "clean", "val"), bands, strict=True):
            bh, bw = band.shape
            side = min(TILE, bh, bw)
            corners = [(y, x) for y in range(0, bh - side + 1, side) for x in range(0, bw - side + 1, side)]
            for k, (y, x) in enumerate(corners):
                tile = band[y:y + side, x:x + side]
                if role == "degraded":
                    save("train/degraded", f"{name}_{k}", _veil(tile, rng))
                elif role == "clean":
                    save("train/clean", f"{name}_{k}", tile)
                else:
                    save("val/hazy", f"{name}_{k}", _veil(tile, rng))
                    save("val/clear", f"{name}_{k}", tile)
    return counts


# ---------------------------------------------------------------------------------------------- finetuning
def finetune_with_snapshots(domain: Path, out: Path, init: str, budgets: list[float], by_steps: bool,
                            device: str, preset_name: str) -> list[dict]:
    """One finetuning run to the longest budget; the restorer saved at each budget (minutes, or steps)."""
    from napari_cdd_dehaze.gan.checkpoint import save_restorer
    from napari_cdd_dehaze.gan.config import preset
    from napari_cdd_dehaze.gan.trainer import Trainer

    longest = max(budgets)
    config = preset(preset_name, device=device, **({"steps": int(longest), "minutes": 0.0} if by_steps else
                                                   {"minutes": float(longest), "steps": 1_000_000}))
    trainer = Trainer(config, domain / "train" / "degraded", domain / "train" / "clean", out / "run", init_from=init)
    pending, snapshots, began = sorted(budgets), [], time.perf_counter()
    for event in trainer.events():
        if event.kind not in ("step", "finished"):
            continue
        reached = event.step if by_steps else event.trained_s / 60
        while pending and (reached >= pending[0] or event.kind == "finished"):
            budget = pending.pop(0)
            path = out / (f"after_{int(budget)}_steps.safetensors" if by_steps else f"after_{budget:g}_min.safetensors")
            save_restorer(path, trainer.method.shipped_restorer(), {"step": event.step, "budget": budget})
            snapshots.append({"budget": budget, "unit": "steps" if by_steps else "min", "step": event.step,
                              "trained_s": round(event.trained_s, 1),
                              "wall_s": round(time.perf_counter() - began, 1), "model": str(path)})
            print(f"  snapshot {budget:g} {snapshots[-1]['unit']}: step {event.step}, "
                  f"{event.trained_s:.0f} s of training", file=sys.stderr)
    return snapshots


def score(domain: Path, methods: dict[str, str], device: str) -> dict[str, dict]:
    from napari_cdd_dehaze.evaluate import evaluate

    report = evaluate([domain / "val"], [], list(methods.values()), device=device, tile=0)
    result = report.sets[0]
    identity = result.scores.get("identity", {})
    table = {}
    for label, spec in methods.items():
        means = result.means(spec)
        per_image = result.scores.get(spec, {})
        worst = min((per_image[k]["psnr"] - identity[k]["psnr"] for k in per_image if k in identity), default=np.nan)
        table[label] = {"psnr": means["psnr"], "ssim": means["ssim"], "ciede2000": means["ciede2000"],
                        "worst_vs_input": float(worst), "images": means["images"]}
    return table


def markdown(name: str, table: dict[str, dict], snapshots: list[dict]) -> str:
    steps = {f"finetuned {s['budget']:g} {s['unit']}": s for s in snapshots}
    lines = [f"### {name}", "", "| method | training | PSNR dB | SSIM | ΔE00 | worst image vs input dB |",
             "|---|---|---|---|---|---|"]
    for label, row in table.items():
        s = steps.get(label)
        trained = f"{s['step']} steps, {s['trained_s'] / 60:.1f} min" if s else "–"
        lines.append(f"| {label} | {trained} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['ciede2000']:.2f} | "
                     f"{row['worst_vs_input']:+.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (name, r), colour in zip(results.items(), ("tab:blue", "tab:orange", "tab:green"), strict=False):
        unit = r["snapshots"][0]["unit"] if r["snapshots"] else "min"
        xs = [0] + [s["budget"] for s in r["snapshots"]]
        for ax, measure in zip(axes, ("psnr", "ciede2000"), strict=True):
            ys = [r["table"]["start model"][measure]] + [r["table"][f"finetuned {s['budget']:g} {s['unit']}"][measure]
                                                        for s in r["snapshots"]]
            ax.plot(xs, ys, "o-", color=colour, label=f"{name}: finetuned")
            for base, style in (("hazy input", "--"), ("CAP", ":")):
                ax.axhline(r["table"][base][measure], color=colour, linestyle=style, linewidth=1,
                           label=f"{name}: {base}")
            ax.set_xlabel(f"training {'steps' if unit == 'steps' else 'minutes'}")
    axes[0].set_ylabel("PSNR dB (higher is better)")
    axes[1].set_ylabel("CIEDE2000 (lower is better)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domain", nargs="+", type=Path, default=[], help="domain folders (see the docstring)")
    parser.add_argument("--budgets", nargs="+", type=float, default=[2, 5, 10], help="minutes of training")
    parser.add_argument("--step-budgets", nargs="+", type=int, help="steps instead of minutes (e.g. on a GPU)")
    parser.add_argument("--init", default="default", help="start model (default: the bundled one)")
    parser.add_argument("--preset", default="finetune")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench_finetune_out"))
    parser.add_argument("--make-micrographs", type=Path, metavar="DIR", help="write the micrograph domain and stop")
    parser.add_argument("--plot", nargs="+", type=Path, metavar="RESULTS_JSON",
                        help="draw the results of earlier runs in one quality.png (and table.md) in --out, and stop")
    args = parser.parse_args()
    if args.make_micrographs:
        print(json.dumps(make_micrograph_domain(args.make_micrographs), indent=1))
        return 0
    if args.plot:
        merged = {}
        for path in args.plot:
            merged |= json.loads(path.read_text())["results"]
        args.out.mkdir(parents=True, exist_ok=True)
        tables = [markdown(name, r["table"], r["snapshots"]) for name, r in merged.items()]
        (args.out / "table.md").write_text("\n".join(tables))
        plot(merged, args.out / "quality.png")
        return 0
    if not args.domain:
        parser.error("give --domain (or --make-micrographs)")
    import torch

    by_steps = args.step_budgets is not None
    budgets = [float(b) for b in (args.step_budgets if by_steps else args.budgets)]
    results = {}
    for domain in args.domain:
        out = args.out / domain.name
        out.mkdir(parents=True, exist_ok=True)
        print(f"{domain.name}: finetuning {args.init} for {budgets} {'steps' if by_steps else 'min'}", file=sys.stderr)
        snapshots = finetune_with_snapshots(domain, out, args.init, budgets, by_steps, args.device, args.preset)
        methods = {"hazy input": "identity", "DCP": "dcp", "CAP": "cap", "start model": args.init}
        methods |= {f"finetuned {s['budget']:g} {s['unit']}": s["model"] for s in snapshots}
        results[domain.name] = {"snapshots": snapshots, "table": score(domain, methods, args.device)}
        print(markdown(domain.name, results[domain.name]["table"], snapshots))
    machine = {"cpu": _cpu_name(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "device": args.device}
    (args.out / "results.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    (args.out / "table.md").write_text("\n".join(markdown(n, r["table"], r["snapshots"]) for n, r in results.items()))
    plot(results, args.out / "quality.png")
    print(f"wrote {args.out / 'table.md'}, results.json and quality.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
