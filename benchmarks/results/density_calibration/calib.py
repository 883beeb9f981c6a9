"""Prototype: rescale the restorer's haze density per image, t -> t**s, with s chosen so that a low quantile of
the output's dark channel (at the working scale) meets the clear photos' value. Scored on our own pairs only."""
import sys, json, math
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.image_files import read_image
from napari_cdd_dehaze.evaluate import unit_rgb
from napari_cdd_dehaze.metrics import psnr
from napari_cdd_dehaze.working_scale import shrink, _scattering_maps, block_cover, upsample_rows, GUIDED_UPSAMPLE_EPS
from napari_cdd_dehaze.networks import guided_coefficients, luminance, MIN_TRANSMISSION
torch.set_num_threads(2)

def dark(x, r):  # x (1,C,h,w) in [0,1]
    m = x.min(1, keepdim=True).values
    return -F.max_pool2d(-F.pad(m, (r, r, r, r), mode='replicate'), 2 * r + 1, 1) if r else m

def small_of(img):  # img (H,W,3) unit
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float() * 2 - 1
    H, W = t.shape[-2:]
    return t, shrink(lambda y0, y1, x0, x1: t[..., y0:y1, x0:x1], H, W, 128, 1 << 24)

def restore(g, img, mode):
    full, small = small_of(img); H, W = full.shape[-2:]
    if max(H, W) <= 128:
        small = F.pad(small, (0, -W % 4, 0, -H % 4), mode='replicate')
    with torch.inference_mode():
        t, a = _scattering_maps(g, small, None)
    su = (small.float() + 1) / 2
    s = 1.0
    if mode:
        q, target, r, lo, hi = mode
        def stat(s):
            J = ((su - a) / t.clamp(min=MIN_TRANSMISSION) ** s + a).clamp(0, 1)
            return torch.quantile(dark(J, r).flatten(), q).item()
        l, h = math.log(lo), math.log(hi)
        if stat(math.exp(l)) <= target: s = math.exp(l)
        elif stat(math.exp(h)) >= target: s = math.exp(h)
        else:
            for _ in range(18):
                m = (l + h) / 2
                if stat(math.exp(m)) > target: l = m
                else: h = m
            s = math.exp((l + h) / 2)
    t = t.clamp(min=MIN_TRANSMISSION) ** s
    coef = torch.cat(guided_coefficients(luminance(su), t, 8, GUIDED_UPSAMPLE_EPS), 1)
    _, ch, cw = block_cover(H, W, 128)
    tb = upsample_rows(coef, ch, cw, 0, H, W)
    unit = (full + 1) / 2
    tb = (tb[:, :1] * luminance(unit) + tb[:, 1:]).clamp(MIN_TRANSMISSION, 1)
    J = ((unit - a) / tb + a).clamp(0, 1)
    return J[0].permute(1, 2, 0).numpy(), s

def clean_stats(folder, r, qs):
    vals = {q: [] for q in qs}
    for p in sorted(Path(folder).iterdir()):
        img = unit_rgb(read_image(p)); _, small = small_of(img)
        d = dark((small + 1) / 2, r).flatten()
        for q in qs: vals[q].append(torch.quantile(d, q).item())
    return {q: (float(np.median(v)), float(np.mean(v)), float(np.std(v))) for q, v in vals.items()}

if __name__ == '__main__':
    if sys.argv[1] == 'stats':
        print(clean_stats('/work/data/haze-v2/clean', int(sys.argv[2]), [0.01, 0.05, 0.1, 0.25]))
        sys.exit()
