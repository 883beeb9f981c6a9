"""Haze synthesis of the default model's training set: density range, depth prior, and the set builder."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cdd_dehaze.imaging.synthesis import depth_prior, haze_with_depth, lift_nearest
from napari_cdd_dehaze.io.image_files import read_image, write_image

ROOT = Path(__file__).resolve().parents[1]


def kept_light(beta_range=None, draws: int = 200) -> np.ndarray:
    """Transmission of the farthest point per draw: white minus black under the same draw of haze."""
    far, args = np.ones((4, 4), np.float32), () if beta_range is None else (beta_range,)
    kept = []
    for seed in range(draws):
        black, white = (haze_with_depth(np.full((4, 4, 3), value, np.float32), far, np.random.default_rng(seed), *args)
                        for value in (0.0, 1.0))
        kept.append(float(np.mean(white - black)))
    return np.array(kept)


def test_default_density_keeps_5_to_55_percent_of_the_far_light():
    kept = kept_light()
    assert kept.min() >= np.exp(-3.0) - 1e-4 and kept.max() <= np.exp(-0.6) + 1e-4
    assert kept.max() - kept.min() > 0.4  # spread over the range, not one value


def test_a_wider_density_range_adds_light_haze():
    kept = kept_light((0.1, 3.0))
    assert kept.min() >= np.exp(-3.0) - 1e-4 and kept.max() <= np.exp(-0.1) + 1e-4
    assert (kept > 0.6).mean() > 0.1  # light haze (over 60 % kept) appears, which the default range never gives


def test_the_airlight_is_drawn_from_its_range():
    """A black scene under haze shows A·(1 − t); a white one shows t + A·(1 − t): so A = black / (1 − t)."""
    far, same = np.ones((4, 4), np.float32), np.random.default_rng
    for airlight_range in ((0.7, 1.0), (0.95, 1.0)):
        grey = []
        for seed in range(100):
            black, white = (haze_with_depth(np.full((4, 4, 3), value, np.float32), far, same(seed), (2.0, 3.0),
                                            airlight_range)[0, 0] for value in (0.0, 1.0))
            grey.append(float(np.mean(black / (1 - (white - black)))))  # the tint averages out over channels
        assert airlight_range[0] - 0.041 <= min(grey) and max(grey) <= 1.0
        assert abs(np.mean(grey) - np.mean(airlight_range)) < 0.03


def twelve_photos(folder: Path, photos: dict[str, np.ndarray]) -> Path:
    for i in range(12):
        name, image = list(photos.items())[i % len(photos)]
        write_image(folder / f"{name}_{i}.png", (image[::4, ::4] * 255).astype(np.uint8))
    return folder


def build_twice(clear: Path, tmp_path: Path, option: list[str], name: str, *common: str) -> str:
    """``make_hazy_set.py`` on ``clear`` into ``tmp_path/plain`` and, with ``option``, into ``tmp_path/name``."""
    script = str(ROOT / "training" / "make_hazy_set.py")
    for out, extra in (("plain", []), (name, option)):
        run = subprocess.run([sys.executable, script, "--clear", str(clear), "--out", str(tmp_path / out),
                              "--holdout", "20", *common, *extra], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    return script


@pytest.fixture
def photo(photos):
    return next(iter(photos.values()))


def test_depth_prior_is_relative_and_far_at_the_top(photo):
    depth = depth_prior(photo, np.random.default_rng(3))
    assert depth.shape == photo.shape[:2] and depth.dtype == np.float32
    assert depth.min() >= 0 and depth.max() <= 1
    assert depth[: len(depth) // 5].mean() > depth[-len(depth) // 5:].mean() + 0.2


def test_lift_nearest_raises_the_near_end_and_keeps_the_order(photo):
    depth = depth_prior(photo, np.random.default_rng(3))
    lifted = lift_nearest(depth, 0.7)
    assert lifted.dtype == np.float32 and lifted.min() >= 0.7 - 1e-6
    assert lifted.max() == pytest.approx(0.7 + 0.3 * depth.max()) and lifted.max() - lifted.min() < 0.31
    order = np.argsort(depth, axis=None)
    assert (np.diff(lifted.ravel()[order]) >= 0).all()  # far stays far
    with pytest.raises(ValueError, match="fraction of the far depth"):
        lift_nearest(depth, 1.5)


def test_make_hazy_set_splits_scenes_and_respects_the_density(tmp_path, photos):
    clear = twelve_photos(tmp_path / "clear", photos)
    out = tmp_path / "set"
    run = subprocess.run([sys.executable, str(ROOT / "training" / "make_hazy_set.py"), "--clear", str(clear),
                          "--out", str(out), "--holdout", "20", "--beta", "0.1", "0.2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    hazed = {p.stem.rsplit("_h", 1)[0] for p in (out / "degraded").glob("*.png")}
    clean = {p.stem for p in (out / "clean").glob("*.png")}
    val = {p.stem for p in (out / "val" / "hazy").glob("*.png")}
    assert hazed and clean and not (hazed & clean) and not (val & (hazed | clean))
    assert len(hazed) + len(clean) + len(val) == 12
    assert val == {p.stem for p in (out / "val" / "clear").glob("*.png")}
    for name in val:  # β ≤ 0.2 over relative depth ≤ 1: at least e^-0.2 of the light is left, so pairs stay close
        hazy = read_image(out / "val" / "hazy" / f"{name}.png").astype(np.float32) / 255
        truth = read_image(out / "val" / "clear" / f"{name}.png").astype(np.float32) / 255
        assert np.abs(hazy - truth).mean() < 0.25 * np.abs(1 - truth).mean() + 0.02


def test_make_hazy_set_dims_the_training_scenes_and_keeps_the_haze_and_the_validation_pairs(tmp_path, photos):
    """``--light`` scales the clean photos and the degraded scenes (before the haze) by factors in its range;
    the haze drawn for each image and the validation pairs are those of a run without it."""
    clear = twelve_photos(tmp_path / "clear", photos)
    script = build_twice(clear, tmp_path, ["--light", "0.4", "0.6"], "dim", "--beta", "0.1", "0.2")
    load = lambda path: read_image(path).astype(np.float32)  # noqa: E731
    for part in ("val/hazy", "val/clear"):
        for path in (tmp_path / "plain" / part).glob("*.png"):
            assert np.array_equal(load(path), load(tmp_path / "dim" / part / path.name))
    for path in (tmp_path / "plain" / "clean").glob("*.png"):
        ratio = load(tmp_path / "dim" / "clean" / path.name).sum() / load(path).sum()
        assert 0.39 < ratio < 0.61, ratio
    for path in (tmp_path / "plain" / "degraded").glob("*.png"):
        plain, dim = load(path), load(tmp_path / "dim" / "degraded" / path.name)
        assert 0.4 * plain.sum() < dim.sum() < 0.8 * plain.sum()  # the scene dimmer, the light veil as it was
    bad = subprocess.run([sys.executable, script, "--clear", str(clear), "--out", str(tmp_path / "bad"),
                          "--light", "0", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--light must be" in bad.stderr


def test_make_hazy_set_lifts_the_nearest_point_and_keeps_the_other_draws(tmp_path, photos):
    """``--nearest`` hazes the degraded photos with no clear foreground (more veil, the same airlight and density
    draws); the clean photos and the validation pairs are those of a run without it."""
    from napari_cdd_dehaze.imaging.primitives import image_dark_channel as dark_channel

    clear = twelve_photos(tmp_path / "clear", photos)
    script = build_twice(clear, tmp_path, ["--nearest", "0.6", "0.9"], "flat")
    load = lambda path: read_image(path).astype(np.float32) / 255  # noqa: E731
    for part in ("val/hazy", "val/clear", "clean"):
        for path in (tmp_path / "plain" / part).glob("*.png"):
            assert np.array_equal(load(path), load(tmp_path / "flat" / part / path.name))
    degraded = sorted((tmp_path / "plain" / "degraded").glob("*.png"))
    assert degraded
    for path in degraded:
        plain, flat = load(path), load(tmp_path / "flat" / "degraded" / path.name)
        rows = len(plain) // 4  # the bottom quarter, the near part of the prior: veiled once lifted
        assert dark_channel(flat[-rows:]).mean() > dark_channel(plain[-rows:]).mean() + 0.05
    bad = subprocess.run([sys.executable, script, "--clear", str(clear), "--out", str(tmp_path / "bad"),
                          "--nearest", "0.5", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--nearest must be" in bad.stderr
