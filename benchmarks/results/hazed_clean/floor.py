"""python floor.py OUT_DIR MODEL FOLDER... : cdd-dehaze eval's scoring of MODEL with an airlight floor, paired folders
only. The floor: the composed grey airlight is max(the head's pooled a, the grey mean of He et al.'s airlight of the
working-scale copy, dark channel over PATCH px), and t is changed so that the veil a(1 - t) stays the head's:
t' = 1 - a(1 - t)/a'. Patched into the engine's _scattering_maps, so everything else is the shipped code path."""
import os, sys, json
from pathlib import Path
import numpy as np, torch
import napari_cdd_dehaze.working_scale as ws
from napari_cdd_dehaze.classical import estimate_airlight, dark_channel
from napari_cdd_dehaze.networks import MIN_TRANSMISSION
from napari_cdd_dehaze.evaluate import evaluate
PATCH = int(os.environ.get('PATCH', '3'))
original = ws._scattering_maps

def floored(generator, small, autocast_dtype):
    t, a = original(generator, small, autocast_dtype)
    unit = ((small.float() + 1) / 2)[0].permute(1, 2, 0).cpu().numpy()
    he = float(estimate_airlight(unit, dark_channel(unit, PATCH)).mean())
    floor = torch.maximum(a, torch.full_like(a, he))
    return (1 - a * (1 - t) / floor).clamp(MIN_TRANSMISSION, 1), floor

if os.environ.get('FLOOR', '1') == '1':
    ws._scattering_maps = floored
out, model, folders = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
unpaired = [f for f in folders if f.startswith('u:')]
paired = [f for f in folders if not f.startswith('u:')]
report = evaluate(paired, [u[2:] for u in unpaired], [model], device='cpu', tile=0)
paths = report.write(out)
print(report.to_markdown().split('\n\n')[0][:3000])
