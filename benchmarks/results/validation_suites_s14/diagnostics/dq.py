"""Dark-channel quantiles of clear GT vs outputs on our validation pairs (images shrunk to short side 96, as in training)."""
import sys, numpy as np, imageio.v3 as iio, torch, torch.nn.functional as F
from pathlib import Path
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.restore import restore_array, RestoreOptions
from napari_cdd_dehaze.networks import dark_channel
from napari_cdd_dehaze.metrics import psnr
val = Path(sys.argv[1]); specs = sys.argv[2:]
models = {s: load_model(s) for s in specs}
P = torch.tensor([0.05, 0.1, 0.25, 0.5, 0.75])
def q(img):
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    h, w = t.shape[-2:]; s = 96 / min(h, w)
    t = F.interpolate(t, size=(round(h*s), round(w*s)), mode='bilinear', antialias=True, align_corners=False)
    d = dark_channel(t.clamp(0, 1), 15).flatten()
    return torch.quantile(d, P).numpy()
res = {k: [] for k in ['clear', 'hazy', *specs]}; ps = {s: [] for s in specs}
for f in sorted((val/'hazy').iterdir()):
    hazy = iio.imread(f)[..., :3].astype(np.float32)/255; clear = iio.imread(val/'clear'/f.name)[..., :3].astype(np.float32)/255
    res['clear'].append(q(clear)); res['hazy'].append(q(hazy))
    for s, m in models.items():
        out = np.clip(restore_array(m, hazy, RestoreOptions(tile=0, device='cpu')), 0, 1)
        res[s].append(q(out)); ps[s].append(psnr(out, clear))
for k, v in res.items():
    a = np.array(v); print(f'{k[-22:]:>22} mean', np.round(a.mean(0), 3), 'std', np.round(a.std(0), 3))
c = np.array(res['clear'])
for s in specs:
    a = np.array(res[s]); e = a - c; p = np.array(ps[s])
    print(s[-22:], 'excess mean', np.round(e.mean(0), 3), 'corr(excess, psnr)', [round(float(np.corrcoef(e[:, i], p)[0, 1]), 2) for i in range(5)],
          'corr(clear q, excess)', [round(float(np.corrcoef(c[:, i], e[:, i])[0, 1]), 2) for i in range(5)])
