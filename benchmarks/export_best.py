"""Copy the validation-best snapshots of a ``training/timed_runs.py`` sweep out as restorer files.

    python benchmarks/export_best.py SWEEP_DIR OUT_DIR [N]

Reads ``SWEEP_DIR/summary.json`` (validation PSNR of every snapshot) and writes, for the best snapshot of
each run (best first, at most ``N`` files), ``OUT_DIR/<run>_<step>.safetensors``: the EMA restorer, the
form the package ships. Scores come from the validation pairs only.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from napari_cdd_dehaze.gan.checkpoint import load_restorer, save_restorer


def main() -> int:
    sweep, out = Path(sys.argv[1]), Path(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    scores = json.loads((sweep / "summary.json").read_text())["val_psnr"]
    best: dict[str, tuple[float, str]] = {}
    for spec, means in scores.items():
        path = Path(spec)
        if path.parent.name != "checkpoints":
            continue  # a baseline
        run = path.parent.parent.name
        if run not in best or means["psnr"] > best[run][0]:
            best[run] = (means["psnr"], spec)
    for psnr, spec in sorted(best.values(), reverse=True)[:limit]:
        path = Path(spec)
        step = int(path.name.split("_")[-1])
        target = out / f"{path.parent.parent.name}_{step}.safetensors"
        save_restorer(target, load_restorer(path), {"checkpoint": path.name, "val_psnr": psnr})
        print(f"{target.name}: validation PSNR {psnr:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
