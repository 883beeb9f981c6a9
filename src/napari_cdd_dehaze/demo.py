"""``cdd-dehaze demo``: a hazy scene, restored by a model and by classical baselines, side by side.

Needs no input files and no display: the scene is scikit-image's motorcycle photo under synthetic haze
(the napari sample "hazy outdoor scene"), so the clear original is known and every restoration gets a
PSNR and SSIM against it. The picture is drawn with matplotlib's Agg backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .imaging.metrics import psnr, ssim
from .models import load_model
from .restore.engine import RestoreOptions, restore_array

SHORT_LABELS = {"dcp": "dark channel prior", "cap": "colour atten. prior", "default": "default model (CDD-GAN)"}


@dataclass
class DemoResult:
    label: str
    image: np.ndarray  # uint8 RGB
    psnr: float
    ssim: float
    seconds: float


def run_demo(model: str = "default", baselines: tuple[str, ...] = ("dcp", "cap"), device: str = "auto",
             log=print) -> tuple[np.ndarray, np.ndarray, list[DemoResult]]:
    """(clear, hazy, results): the hazy sample restored by each of ``baselines`` and by ``model``."""
    import time

    from ._sample_data import hazy_outdoor_scene

    (clear, _, _), (hazy, _, _) = hazy_outdoor_scene()
    results = [DemoResult("hazy input", hazy, psnr(clear / 255, hazy / 255), ssim(clear / 255, hazy / 255), 0.0)]
    for spec in (*baselines, model):
        restorer = load_model(spec)
        start = time.perf_counter()
        restored = restore_array(restorer, hazy, RestoreOptions(device=device))
        seconds = time.perf_counter() - start
        label = SHORT_LABELS.get(spec) or Path(spec).name
        results.append(DemoResult(label, restored, psnr(clear / 255, restored / 255),
                                  ssim(clear / 255, restored / 255), seconds))
        log(f"{label}: PSNR {results[-1].psnr:.2f} dB, SSIM {results[-1].ssim:.3f} ({seconds:.1f} s)")
    return clear, hazy, results


def draw(clear: np.ndarray, results: list[DemoResult], path: str | Path) -> Path:
    """One row: every result with its scores, then the clear original."""
    from matplotlib.figure import Figure

    panels = [(f"{r.label}\n{r.psnr:.2f} dB, SSIM {r.ssim:.3f}", r.image) for r in results]
    panels.append(("clear original\n(reference)", clear))
    h, w = clear.shape[:2]
    figure = Figure(figsize=(2.6 * len(panels), 2.6 * h / w + 0.5), dpi=150)
    for i, (title, image) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), i + 1)
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight", pad_inches=0.05)
    return path
