import sys; sys.path.insert(0, '/work/main/training')
from pathlib import Path
import numpy as np
from validation_suites import photo_suite
from napari_cdd_dehaze.data import list_images
from napari_cdd_dehaze.image_files import read_image
from napari_cdd_dehaze.evaluate import evaluate
from make_hazy_set import unit_rgb
out = Path(sys.argv[1]); methods = sys.argv[2:]
photos = [unit_rgb(read_image(p)) for p in list_images(Path('/work/data/haze-v2/val/clear'))[:12]]
folders = []
for dim in (0.5,):
    for beta in (1.0, 2.0):
        folders.append(photo_suite([p * dim for p in photos], out / f'dim{dim:g}-b{beta:g}', beta, 1))
report = evaluate(folders, [], methods, device='cpu', tile=0, log=lambda m: None)
report.write(out / 'report'); print(report.summary_table())
