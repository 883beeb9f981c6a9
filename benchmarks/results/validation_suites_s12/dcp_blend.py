"""Prototype: blend the shipped model's working-scale t with a dark-channel t computed with its own airlight."""
import sys
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from napari_cdd_dehaze import working_scale
from napari_cdd_dehaze.image_files import read_image
from napari_cdd_dehaze.metrics import psnr
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.restore import RestoreOptions, restore_array

original = working_scale._scattering_maps
mode = {"w": 1.0, "patch": 5}
def blended(g, small, ad):
    t, a = original(g, small, ad)
    if mode["w"] == 1.0:
        return t, a
    unit = (small.float() + 1) / 2
    p = mode["patch"]
    dark = -F.max_pool2d(-(unit / a.clamp_min(1e-3)).amin(1, keepdim=True), p, 1, p // 2)
    t_dcp = (1 - 0.95 * dark).clamp(0.1, 1)
    return mode["w"] * t + (1 - mode["w"]) * t_dcp, a
working_scale._scattering_maps = blended
g = load_model("default")
variants = [(1.0, 5), (0.75, 5), (0.5, 5), (0.75, 9), (0.5, 9)]
print("suite", " ".join(f"w{w}p{p}" for w, p in variants))
for suite in map(Path, sys.argv[1:]):
    names = sorted((suite / "hazy").iterdir())
    pairs = [(read_image(n).astype(np.float32) / 255, read_image(suite / "clear" / n.name).astype(np.float32) / 255) for n in names]
    row = []
    for w, p in variants:
        mode.update(w=w, patch=p)
        row.append(np.mean([psnr(c, restore_array(g, h, RestoreOptions(device="cpu"))) for h, c in pairs]))
    print(suite.name, " ".join(f"{x:.2f}" for x in row), flush=True)
