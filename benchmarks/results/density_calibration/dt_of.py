"""python dt_of.py OUT TARGET label=model ...: restorer files of these models with dark_target TARGET."""
import dataclasses, sys
from pathlib import Path
from napari_cdd_dehaze.checkpoint import save_restorer
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.networks import ResnetGenerator
out, target = Path(sys.argv[1]), float(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
for item in sys.argv[3:]:
    label, spec = item.split("=", 1)
    model = load_model(spec)
    g = ResnetGenerator(dataclasses.replace(model.config, dark_target=target))
    g.load_state_dict(model.state_dict())
    save_restorer(out / f"{label}.safetensors", g.eval())
