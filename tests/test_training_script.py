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
    second = subprocess.run(base + ["--resume", "--steps", "3"], capture_output=True, text=True, check=True)
    assert "steps 2→3" in second.stdout and "step 3/3" in second.stdout  # a field as an option, over the file
    rows = (tmp_path / "run" / "losses.csv").read_text().splitlines()
    assert rows[0].startswith("step,seconds,lr,steps_per_s,critics") and [r.split(",")[0] for r in rows[1:]] == \
        ["1", "2", "3"]


def test_shipped_recipes_are_valid():
    from napari_cdd_dehaze.gan.config import TrainConfig, preset
    for method, prefix in (("cdd-gan", ""), ("dcd-gan", "dcd-")):
        for name in ("paper", "cpu"):
            recipe = yaml.safe_load((SCRIPT.parent / "configs" / f"{prefix}{name}.yaml").read_text())
            assert TrainConfig.from_dict(recipe) == preset(name, method=method).replace(device="auto")
    default = yaml.safe_load((SCRIPT.parent / "configs" / "default.yaml").read_text())
    assert TrainConfig.from_dict(default) == preset("default")  # the bundled model's recipe, in both places
    finetune = yaml.safe_load((SCRIPT.parent / "configs" / "finetune.yaml").read_text())
    assert TrainConfig.from_dict(finetune) == preset("finetune")
    start = yaml.safe_load((SCRIPT.parent / "configs" / "default-start.yaml").read_text())
    assert TrainConfig.from_dict({**default, **start}) == preset("default", airlight_floor=0)  # its stage 1
    smoke = TrainConfig.from_dict(yaml.safe_load((SCRIPT.parent / "configs" / "smoke.yaml").read_text()))
    assert smoke.width == 8 and smoke.steps == 20


def test_validation_suites_score_every_suite_in_one_report(photos, tmp_path):
    """The suites script writes fixed-density, dimmed and measured-depth pairs (the same for the same seed) and scores
    the methods on them and on the validation pairs with the library's evaluation; for a pooled-airlight
    restorer it also reports the airlight it reads on each airlight suite."""
    import json

    import numpy as np
    import pytest
    import torch
    from conftest import to_u8
    from skimage.transform import resize

    from napari_cdd_dehaze.gan.checkpoint import load_restorer, save_restorer
    from napari_cdd_dehaze.gan.networks import GeneratorConfig, ResnetGenerator
    from napari_cdd_dehaze.imaging.synthesis import add_haze, ramp_depth
    from napari_cdd_dehaze.io.image_files import read_image, write_image
    from napari_cdd_dehaze.restore.working_scale import haze_at_working_scale

    clear = resize(photos["astronaut"], (64, 96), anti_aliasing=True).astype(np.float32)
    for part, image in (("clear", clear), ("hazy", add_haze(clear, ramp_depth(clear.shape[:2]), 1.0))):
        (tmp_path / "val" / part).mkdir(parents=True)
        write_image(tmp_path / "val" / part / "a.png", to_u8(image))
    (tmp_path / "depth" / "scene").mkdir(parents=True)
    write_image(tmp_path / "depth" / "scene" / "rgb.png", to_u8(clear))
    write_image(tmp_path / "depth" / "scene" / "depth_mm.png",
                np.tile(np.linspace(1000, 5000, 96, dtype=np.uint16), (64, 1)))
    torch.manual_seed(0)
    pooled = ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="dehaze", estimate_size=64, pool_airlight=1))
    restorer = str(save_restorer(tmp_path / "pooled.safetensors", pooled))
    script = SCRIPT.parent / "validation_suites.py"
    args = ["--pairs", str(tmp_path / "val"), "--depth", str(tmp_path / "depth"), "--method", "identity", "dcp",
            restorer, "--betas", "0.5", "2", "--depth-betas", "1", "--airlights", "0.8", "1", "--flat-betas", "2",
            "--count", "1"]
    for out in ("a", "b"):
        done = subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / out)],
                              capture_output=True, text=True, check=True)
        assert "fixed-0.5 (1, paired)" in done.stdout and "depth-1 (1, paired)" in done.stdout
    report = json.loads((tmp_path / "a" / "report" / "report.json").read_text())
    sets = {s["name"]: s["means"] for s in report["sets"]}
    assert list(sets) == ["val", "fixed-0.5", "fixed-2", "airlight-0.8", "airlight-1", "dim-0.5", "flat-2",
                          "depth-1"]
    read = json.loads((tmp_path / "a" / "report" / "airlight_read.json").read_text())
    assert list(read) == [restorer] and list(read[restorer]) == ["0.8", "1"]  # the classical methods read none
    hazy = read_image(tmp_path / "a" / "suites" / "airlight-1" / "hazy" / "000.png")
    x = torch.from_numpy(hazy.transpose(2, 0, 1) / 255.0).float()[None] * 2 - 1
    assert read[restorer]["1"] == [pytest.approx(float(haze_at_working_scale(load_restorer(restorer), x)[1]))]
    assert "A = 0.8" in (tmp_path / "a" / "report" / "airlight_read.md").read_text()
    assert sets["fixed-0.5"]["identity"]["psnr"] > sets["fixed-2"]["identity"]["psnr"]  # denser haze, further off
    assert sets["fixed-2"]["dcp"]["psnr"] > sets["fixed-2"]["identity"]["psnr"]
    dim_clear, lit_clear = (read_image(tmp_path / "a" / "suites" / s / "clear" / "000.png").astype(float)
                            for s in ("dim-0.5", "fixed-2"))
    assert np.abs(dim_clear - lit_clear / 2).max() <= 1  # the same photo at half the light (8-bit rounding)
    flat, steep = (read_image(tmp_path / "a" / "suites" / s / "hazy" / "000.png").astype(float) for s in ("flat-2",
                                                                                                        "fixed-2"))
    assert flat.mean() > steep.mean() + 5  # the same photo, density and airlight: no clear foreground, more veil
    for suite, name in (("fixed-2", "000.png"), ("airlight-0.8", "000.png"), ("dim-0.5", "000.png"),
                        ("flat-2", "000.png"), ("depth-1", "scene.png")):
        first, second = (read_image(tmp_path / out / "suites" / suite / "hazy" / name) for out in "ab")
        assert np.array_equal(first, second)  # deterministic for a seed


def test_a_run_in_stages_stops_where_told_and_resumes_with_the_airlight_floor_on(unpaired_folders, tmp_path):
    """The bundled model's two stages in small: `--until` stops with a checkpoint and the restorer file; a second
    recipe file overrides the first; a resumed run may turn on the airlight floor (no weights of its own) but
    keeps its loss weights."""
    import json

    from napari_cdd_dehaze.gan.checkpoint import load_restorer

    recipe = tiny_config(steps=4, checkpoint_every=1, output="scattering", dark_patch=5, estimate_size=64,
                         pool_airlight=1, airlight_floor=3).to_dict()
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "start.yaml").write_text("airlight_floor: 0\n")
    degraded, clean = unpaired_folders
    run = tmp_path / "run"
    base = [sys.executable, str(SCRIPT), "--degraded", str(degraded), "--clean", str(clean), "--out", str(run),
            "--log-every", "1"]
    first = subprocess.run(base + ["--config", str(tmp_path / "recipe.yaml"), str(tmp_path / "start.yaml"),
                                   "--until", "2"], capture_output=True, text=True, check=True)
    assert "stopped at step 2" in first.stdout and "step 3/" not in first.stdout, first.stdout
    saved = lambda step: json.loads((run / "checkpoints" / f"step_{step:07d}" / "meta.json").read_text())  # noqa: E731
    assert saved(2)["config"]["airlight_floor"] == 0
    assert load_restorer(run / "restorer.safetensors").config.airlight_floor == 0
    second = subprocess.run(base + ["--config", str(tmp_path / "recipe.yaml"), "--resume", "--until", "3"],
                            capture_output=True, text=True, check=True)
    assert "steps 2→4" in second.stdout and "stopped at step 3" in second.stdout, second.stdout
    assert saved(3)["config"]["airlight_floor"] == 3
    assert load_restorer(run / "restorer.safetensors").config.airlight_floor == 3
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**recipe, "lambda_gan": 2.0}))
    subprocess.run(base + ["--config", str(tmp_path / "other.yaml"), "--resume"], capture_output=True, text=True,
                   check=True)
    assert saved(4)["config"]["lambda_gan"] == recipe["lambda_gan"] != 2.0  # kept: a resume takes run control only
