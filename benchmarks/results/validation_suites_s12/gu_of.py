"""python gu_of.py OUT R label=model ...: restorer files of these models with guided_upsample R."""
import dataclasses, sys
from pathlib import Path
from napari_cdd_dehaze.checkpoint import save_restorer
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.networks import ResnetGenerator
out, r = Path(sys.argv[1]), int(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
for item in sys.argv[3:]:
    label, spec = item.split("=", 1)
    model = load_model(spec)
    g = ResnetGenerator(dataclasses.replace(model.config, guided_upsample=r))
    g.load_state_dict(model.state_dict())
    save_restorer(out / f"{label}.safetensors", g.eval())
