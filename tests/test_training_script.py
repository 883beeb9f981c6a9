"""training/train.py drives the same engine from a YAML recipe, and resumes."""
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import tiny_config

SCRIPT = Path(__file__).parents[1] / "training" / "train.py"


def test_recipe_runs_and_resumes(unpaired_folders, tmp_path):
    recipe = tiny_config(steps=2, checkpoint_every=1).to_dict()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    degraded, clean = unpaired_folders
    base = [sys.executable, str(SCRIPT), "--config", str(tmp_path / "tiny.yaml"), "--degraded", str(degraded),
            "--clean", str(clean), "--out", str(tmp_path / "run"), "--log-every", "1"]
    first = subprocess.run(base, capture_output=True, text=True, check=True)
    assert "step 2/2" in first.stdout and "finished at step 2" in first.stdout
    recipe["steps"] = 3
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    second = subprocess.run(base + ["--resume"], capture_output=True, text=True, check=True)
    assert "steps 2→3" in second.stdout and "step 3/3" in second.stdout
    rows = (tmp_path / "run" / "losses.csv").read_text().splitlines()
    assert rows[0].startswith("step,seconds,critics") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_shipped_recipes_are_valid():
    from napari_cdd_dehaze.config import TrainConfig, preset
    for method, prefix in (("cdd-gan", ""), ("dcd-gan", "dcd-")):
        for name in ("paper", "cpu"):
            recipe = yaml.safe_load((SCRIPT.parent / "configs" / f"{prefix}{name}.yaml").read_text())
            assert TrainConfig.from_dict(recipe) == preset(name, method=method).replace(device="auto")
    default = yaml.safe_load((SCRIPT.parent / "configs" / "default.yaml").read_text())
    assert TrainConfig.from_dict(default) == preset("default")  # the bundled model's recipe, in both places
    smoke = TrainConfig.from_dict(yaml.safe_load((SCRIPT.parent / "configs" / "smoke.yaml").read_text()))
    assert smoke.width == 8 and smoke.steps == 20
