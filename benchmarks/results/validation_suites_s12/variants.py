"""Write restorer files that differ only in guided_upsample (inference-only field)."""
import dataclasses, sys
from pathlib import Path
from napari_cdd_dehaze.checkpoint import load_restorer, save_restorer
from napari_cdd_dehaze.models import load_model
from napari_cdd_dehaze.networks import ResnetGenerator

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for label, spec in [("shipped", "default"), ("H4", "/work/exp/s11/H4/checkpoints/step_0000800")]:
    model = load_model(spec)
    for r in map(int, sys.argv[2:]):
        g = ResnetGenerator(dataclasses.replace(model.config, guided_upsample=r))
        g.load_state_dict(model.state_dict())
        save_restorer(out / f"{label}-gu{r}.safetensors", g.eval())
