import sys, numpy as np, imageio.v3 as iio
from pathlib import Path
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.restore import restore_array, RestoreOptions
val = Path(sys.argv[1]); specs = sys.argv[2:]; models = {s: load_model(s) for s in specs}
rows = []
for f in sorted((val/'hazy').iterdir()):
    hazy = iio.imread(f)[..., :3].astype(np.float32)/255; clear = iio.imread(val/'clear'/f.name)[..., :3].astype(np.float32)/255
    r = [clear.mean(), hazy.mean()] + [np.clip(restore_array(m, hazy, RestoreOptions(tile=0, device='cpu')), 0, 1).mean() for m in models.values()]
    rows.append(r)
a = np.array(rows); print('mean brightness clear, hazy,', specs); print(np.round(a.mean(0), 3)); print('mean |out-clear| brightness', np.round(np.abs(a[:, 2:] - a[:, :1]).mean(0), 3))
