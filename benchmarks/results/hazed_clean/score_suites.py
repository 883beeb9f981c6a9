"""Experiment record (session 16; the paths are the development machine's).
python ens.py OUT.json name=m1+m2+m3 ... : mean PSNR per suite of t-ensembles (geometric mean of t, mean of a,
at the working scale, then the shipped guided upsampling). A single model is name=m1. Our suites only.
FLOOR=W (session 19): the maps pass through floor_airlight(..., W) first (networks.py since session 20) (suites_round6_floor.json)."""
import sys, json, time
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.image_files import read_image
from napari_cdd_dehaze.evaluate import unit_rgb
from napari_cdd_dehaze.metrics import psnr
from napari_cdd_dehaze.data import list_images
from napari_cdd_dehaze.working_scale import shrink, _scattering_maps, block_cover, upsample_rows, GUIDED_UPSAMPLE_EPS
from napari_cdd_dehaze.networks import guided_coefficients, luminance, MIN_TRANSMISSION
from napari_cdd_dehaze.networks import floor_airlight
FLOOR = int(__import__('os').environ.get('FLOOR', '0'))
torch.set_num_threads(int(__import__('os').environ.get('THREADS', '2')))
SUITES = {'val': Path('/work/data/haze-v2/val')}
SUITES.update({p.name: p for p in sorted(Path('/work/exp/s14/suites/suites').iterdir())})
M = {'default': 'default', 'S1': '/work/exp/s15/models/S1_1600.safetensors', 'S2': '/work/exp/s15/models/S2_1600.safetensors',
     'DM': '/work/exp/s13/models/DM_600.safetensors', 'GR': '/work/exp/s14/models/GR_600.safetensors'}
for s in (1, 2):
    for k in (200, 400, 600, 800):
        M[f'GRs{s}_{k}'] = f'/work/exp/s15/models/GRs{s}_{k}.safetensors'
for k in (400, 800):
    M[f'GR_{k}'] = f'/work/exp/s14/models/GR_{k}.safetensors'
for k in (400, 800):
    M[f'DM_{k}'] = f'/work/exp/s13/models/DM_{k}.safetensors'
M['DMs1_400'] = '/work/exp/s13/models/DMs1_400.safetensors'
for extra in __import__('os').environ.get('EXTRA', '').split():
    k, v = extra.split('='); M[k] = v
cache = {}
def gen(k):
    if k not in cache: cache[k] = load_model(M.get(k, k)).eval()
    return cache[k]

def restore(members, img):
    full = torch.from_numpy(img).permute(2, 0, 1)[None].float() * 2 - 1
    H, W = full.shape[-2:]
    small = shrink(lambda y0, y1, x0, x1: full[..., y0:y1, x0:x1], H, W, 128, 1 << 24)
    if max(H, W) <= 128: small = F.pad(small, (0, -W % 4, 0, -H % 4), mode='replicate')
    logt, aa = 0, 0
    with torch.inference_mode():
        for g in members:
            t, a = _scattering_maps(g, small, None)
            logt = logt + t.clamp(min=MIN_TRANSMISSION).log(); aa = aa + a
    t, a = (logt / len(members)).exp(), aa / len(members)
    if FLOOR:
        t, a = floor_airlight((small.float() + 1) / 2, t, a, FLOOR)
    su = (small.float() + 1) / 2; unit = (full + 1) / 2
    _, ch, cw = block_cover(H, W, 128)
    coef = torch.cat(guided_coefficients(luminance(su), t, 8, GUIDED_UPSAMPLE_EPS), 1)
    tb = upsample_rows(coef, ch, cw, 0, H, W)
    tb = (tb[:, :1] * luminance(unit) + tb[:, 1:]).clamp(MIN_TRANSMISSION, 1)
    return ((unit - a) / tb + a).clamp(0, 1)[0].permute(1, 2, 0).numpy()

data = {s: [(unit_rgb(read_image(p)), unit_rgb(read_image(f / 'clear' / p.name))) for p in list_images(f / 'hazy')]
        for s, f in SUITES.items()}
out = Path(sys.argv[1]); res = json.loads(out.read_text()) if out.exists() else {}
for spec in sys.argv[2:]:
    name, ms = spec.split('=') if '=' in spec else (spec, spec)
    members = [gen(k) for k in ms.split('+')]
    t0 = time.time(); r = {}
    for s, pairs in data.items():
        r[s] = float(np.mean([psnr(restore(members, h), c) for h, c in pairs]))
    r['mean'] = float(np.mean([r[s] for s in SUITES]))
    res[name] = r; out.write_text(json.dumps(res, indent=1))
    print(f"{name:28s} mean {r['mean']:.2f} val {r['val']:.2f} " + ' '.join(f"{s}:{v:.2f}" for s, v in r.items() if s not in ('val', 'mean')), f"{time.time()-t0:.0f}s", flush=True)
