import dataclasses, sys
from pathlib import Path
from napari_cdd_dehaze.checkpoint import save_restorer
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.networks import ResnetGenerator
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
model = load_model("default")
for spec in sys.argv[2:]:
    size, r = map(int, spec.split(":"))
    g = ResnetGenerator(dataclasses.replace(model.config, estimate_size=size, guided_upsample=r))
    g.load_state_dict(model.state_dict())
    save_restorer(out / f"shipped-s{size}-gu{r}.safetensors", g.eval())
