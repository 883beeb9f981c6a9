"""python score.py OUT.json [--second] model... : mean PSNR per suite for each model under several calibration modes
(the first grid: quantile, target and range of s; --second: the grid of r2.json, with s**k for k 0.5 and 1)."""
import sys, json, math, time
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from calib import dark, small_of
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.image_files import read_image
from napari_cdd_dehaze.evaluate import unit_rgb
from napari_cdd_dehaze.metrics import psnr
from napari_cdd_dehaze.working_scale import _scattering_maps, block_cover, upsample_rows, GUIDED_UPSAMPLE_EPS
from napari_cdd_dehaze.networks import guided_coefficients, luminance, MIN_TRANSMISSION
torch.set_num_threads(2)
SUITES = {'val': Path('/work/data/haze-v2/val')}
SUITES.update({p.name: p for p in sorted(Path('/work/exp/s14/suites/suites').iterdir())})
MODES = {'none': None}
if '--second' in sys.argv:
    sys.argv.remove('--second')
    for q, tgt in [(0.05, 0.045), (0.05, 0.068), (0.1, 0.059)]:
        for k in [0.5, 1.0]:
            MODES[f'q{q}-t{tgt}-k{k}'] = (q, tgt, 2, 0.5, 3.0, k)
else:
    for q, tgt in [(0.01, 0.032), (0.05, 0.045), (0.05, 0.06), (0.1, 0.06)]:
        for lo, hi in [(0.5, 3.0), (1.0, 3.0)]:
            MODES[f'q{q}-t{tgt}-s{lo}-{hi}'] = (q, tgt, 2, lo, hi, 1.0)

def choose_s(su, t, a, mode):
    q, target, r, lo, hi, _ = mode
    def stat(s):
        J = ((su - a) / t ** s + a).clamp(0, 1)
        return torch.quantile(dark(J, r).flatten(), q).item()
    l, h = math.log(lo), math.log(hi)
    if stat(lo) <= target: return lo
    if stat(hi) >= target: return hi
    for _ in range(16):
        m = (l + h) / 2
        if stat(math.exp(m)) > target: l = m
        else: h = m
    return math.exp((l + h) / 2)

def outputs(g, img):
    full, small = small_of(img); H, W = full.shape[-2:]
    if max(H, W) <= 128: small = F.pad(small, (0, -W % 4, 0, -H % 4), mode='replicate')
    with torch.inference_mode(): t, a = _scattering_maps(g, small, None)
    t = t.clamp(min=MIN_TRANSMISSION); su = (small.float() + 1) / 2; unit = (full + 1) / 2
    _, ch, cw = block_cover(H, W, 128)
    for name, mode in MODES.items():
        s = choose_s(su, t, a, mode) ** mode[5] if mode else 1.0
        coef = torch.cat(guided_coefficients(luminance(su), t ** s, 8, GUIDED_UPSAMPLE_EPS), 1)
        tb = upsample_rows(coef, ch, cw, 0, H, W)
        tb = (tb[:, :1] * luminance(unit) + tb[:, 1:]).clamp(MIN_TRANSMISSION, 1)
        yield name, ((unit - a) / tb + a).clamp(0, 1)[0].permute(1, 2, 0).numpy(), s

res = {}
for spec in sys.argv[2:]:
    g = load_model(spec).eval(); label = Path(spec).stem
    for suite, folder in SUITES.items():
        acc = {m: [] for m in MODES}; ss = {m: [] for m in MODES}
        for p in sorted((folder / 'hazy').iterdir()):
            hazy = unit_rgb(read_image(p)); clear = unit_rgb(read_image(folder / 'clear' / p.name))
            for name, J, s in outputs(g, hazy):
                acc[name].append(psnr(clear, J)); ss[name].append(s)
        for m in MODES:
            res.setdefault(label, {}).setdefault(m, {})[suite] = (float(np.mean(acc[m])), float(np.median(ss[m])))
        print(label, suite, {m: round(v[suite][0], 2) for m, v in res[label].items()}, flush=True)
json.dump(res, open(sys.argv[1], 'w'), indent=1)
for label, modes in res.items():
    print(f'\n{label}  | mean | ' + ' | '.join(SUITES))
    for m, v in modes.items():
        print(f'{m:24s} | {np.mean([v[s][0] for s in SUITES]):.2f} | ' + ' | '.join(f'{v[s][0]:.2f} (s{v[s][1]:.2f})' for s in SUITES))
