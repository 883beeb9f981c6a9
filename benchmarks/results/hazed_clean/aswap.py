"""python aswap.py OUT.json model... : suites PSNR of each restorer with its own pooled airlight and with He et al.'s
airlight estimate (grey mean / RGB) instead, the model's t unchanged. Our suites only (never shared/eval)."""
import sys, json, time, os
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.image_files import read_image
from napari_cdd_dehaze.evaluate import unit_rgb
from napari_cdd_dehaze.metrics import psnr
from napari_cdd_dehaze.data import list_images
from napari_cdd_dehaze.classical import estimate_airlight, dark_channel
from napari_cdd_dehaze.working_scale import shrink, _scattering_maps, block_cover, upsample_rows, GUIDED_UPSAMPLE_EPS
from napari_cdd_dehaze.networks import guided_coefficients, luminance, MIN_TRANSMISSION
torch.set_num_threads(2)
SUITES = {'val': Path('/work/data/haze-v2/val')}
SUITES.update({p.name: p for p in sorted(Path('/work/exp/s14/suites/suites').iterdir())})
SUITES.update({p.name: p for p in sorted(Path('/work/exp/s17/suites').iterdir())})
VARIANTS = os.environ.get('VARIANTS', 'own heG heRGB').split()

def maps(g, img):
    full = torch.from_numpy(img).permute(2, 0, 1)[None].float() * 2 - 1
    H, W = full.shape[-2:]
    small = shrink(lambda y0, y1, x0, x1: full[..., y0:y1, x0:x1], H, W, 128, 1 << 24)
    if max(H, W) <= 128: small = F.pad(small, (0, -W % 4, 0, -H % 4), mode='replicate')
    with torch.inference_mode():
        t, a = _scattering_maps(g, small, None)
    su = (small.float() + 1) / 2; unit = (full + 1) / 2
    _, ch, cw = block_cover(H, W, 128)
    coef = torch.cat(guided_coefficients(luminance(su), t, 8, GUIDED_UPSAMPLE_EPS), 1)
    tb = upsample_rows(coef, ch, cw, 0, H, W)
    tb = (tb[:, :1] * luminance(unit) + tb[:, 1:]).clamp(MIN_TRANSMISSION, 1)
    return unit, tb, a

def compose(unit, t, a):
    return ((unit - a) / t + a).clamp(0, 1)[0].permute(1, 2, 0).numpy()

def he(img):
    return estimate_airlight(img, dark_channel(img, 15))

data = {s: [(unit_rgb(read_image(p)), unit_rgb(read_image(f / 'clear' / p.name))) for p in list_images(f / 'hazy')]
        for s, f in SUITES.items()}
out = Path(sys.argv[1]); res = json.loads(out.read_text()) if out.exists() else {}
for spec in sys.argv[2:]:
    name, path = spec.split('=') if '=' in spec else (spec, spec)
    g = load_model(path).eval(); t0 = time.time()
    r = {v: {} for v in VARIANTS}
    for s, pairs in data.items():
        acc = {v: [] for v in VARIANTS}
        for h, c in pairs:
            unit, t, a = maps(g, h)
            A = torch.from_numpy(he(h)).view(1, 3, 1, 1)
            for v in VARIANTS:
                if v.endswith('v'):  # keep the model's veil a(1 - t), change a: t' = 1 - a(1 - t)/a'
                    aa = {'heGv': A.mean().view(1, 1, 1, 1), 'heRGBv': A, 'maxGv': torch.maximum(a, A.mean().view(1, 1, 1, 1)),
                          'maxRGBv': torch.maximum(a, A), 'midRGBv': (a + A) / 2}[v]
                    tt = (1 - a * (1 - t) / aa).clamp(MIN_TRANSMISSION, 1)
                    acc[v].append(psnr(compose(unit, tt, aa), c)); continue
                aa = {'own': a, 'heG': A.mean().view(1, 1, 1, 1), 'heRGB': A}[v]
                acc[v].append(psnr(compose(unit, t, aa), c))
        for v in VARIANTS: r[v][s] = float(np.mean(acc[v]))
    for v in VARIANTS:
        r[v]['mean11'] = float(np.mean([r[v][s] for s in SUITES if not s.startswith('flat')]))
        res[f'{name}:{v}'] = r[v]
        print(f"{name}:{v:6s} mean11 {r[v]['mean11']:.2f} " + ' '.join(f"{s}:{x:.2f}" for s, x in r[v].items() if s != 'mean11'), flush=True)
    print(f'{time.time()-t0:.0f}s', flush=True)
    out.write_text(json.dumps(res, indent=1))
