"""Prototype: the shipped model's t (working scale, guided r8) composed with other airlights, on the suites."""
import sys
from pathlib import Path
import numpy as np, torch
from napari_cdd_dehaze import working_scale
from napari_cdd_dehaze.image_files import read_image
from napari_cdd_dehaze.metrics import psnr
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.networks import estimate_airlight
from napari_cdd_dehaze.restore import RestoreOptions, restore_array

original = working_scale._scattering_maps
mode = {"v": "own"}
def swapped(g, small, ad):
    t, a = original(g, small, ad)
    unit = (small.float() + 1) / 2
    he = estimate_airlight(unit, 15)
    if mode["v"] == "he-grey":
        a = he.mean(dim=1, keepdim=True)
    elif mode["v"] == "he-max":
        a = he.amax(dim=1, keepdim=True)
    elif mode["v"] == "mix":
        a = (a + he.mean(dim=1, keepdim=True)) / 2
    return t, a
working_scale._scattering_maps = swapped
g = load_model("default")
root = Path(sys.argv[1])
suites = sorted(p for p in root.iterdir() if (p / "hazy").is_dir())
print("suite", "own he-grey he-max mix")
for suite in suites:
    names = sorted((suite / "hazy").iterdir())
    pairs = [(read_image(n).astype(np.float32) / 255, read_image(suite / "clear" / n.name).astype(np.float32) / 255) for n in names]
    row = []
    for v in ("own", "he-grey", "he-max", "mix"):
        mode["v"] = v
        row.append(np.mean([psnr(c, restore_array(g, h, RestoreOptions(device="cpu"))) for h, c in pairs]))
    print(suite.name, " ".join(f"{x:.2f}" for x in row), flush=True)
