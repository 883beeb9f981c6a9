"""Mean dark channel (eval's haze measure) of clear GT, hazy, and outputs on our validation pairs, per image."""
import sys, numpy as np, imageio.v3 as iio
from pathlib import Path
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.restore import restore_array, RestoreOptions
from napari_cdd_dehaze.metrics import mean_dark_channel
val = Path(sys.argv[1]); specs = sys.argv[2:]
models = {s: load_model(s) for s in specs}
rows = []
for f in sorted((val/'hazy').iterdir()):
    hazy = iio.imread(f)[..., :3].astype(np.float32)/255; clear = iio.imread(val/'clear'/f.name)[..., :3].astype(np.float32)/255
    r = [mean_dark_channel(clear), mean_dark_channel(hazy)]
    for s, m in models.items():
        out = restore_array(m, hazy, RestoreOptions(tile=0, device='cpu'))
        r.append(mean_dark_channel(np.clip(out, 0, 1)))
    rows.append(r); print(f.name[:30], ' '.join(f'{v:.3f}' for v in r), flush=True)
a = np.array(rows); print('mean', ' '.join(f'{v:.3f}' for v in a.mean(0)))
print('corr(clear, out-clear):', [round(float(np.corrcoef(a[:,0], a[:,i]-a[:,0])[0,1]),2) for i in range(2, a.shape[1])])
print('std clear', a[:,0].std())
