"""Rain synthesis: seeded, varied, additive; and the rainy sample data."""
import numpy as np
import pytest

from napari_cdd_dehaze.imaging.synthesis import RainLayer, add_rain, line_kernel, rain_streaks, random_rain


def test_line_kernel_lies_along_its_angle_and_has_its_length():
    vertical = line_kernel(11, 0)
    assert vertical.max() == pytest.approx(1)
    rows, cols = np.nonzero(vertical > 0.5)
    assert set(cols) == {vertical.shape[1] // 2} and rows.max() - rows.min() + 1 == 11
    horizontal = line_kernel(11, 90)
    rows, cols = np.nonzero(horizontal > 0.5)
    assert set(rows) == {horizontal.shape[0] // 2} and cols.max() - cols.min() + 1 == 11
    slanted = line_kernel(21, 30)  # leans right at the bottom: the lower half's mass sits right of centre
    centre = slanted.shape[0] // 2
    ys, xs = np.nonzero(slanted > 0.5)
    assert np.all((xs - centre) * (ys - centre) >= 0)
    assert line_kernel(11, 0, blur=1.5).max() == pytest.approx(1)  # blur keeps the streak's height


def test_rain_is_reproducible_from_a_seed_and_changes_with_it(photos):
    clean = photos["chelsea"][::2, ::2]
    a, b, c = random_rain(clean, 7), random_rain(clean, 7), random_rain(clean, 8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == clean.shape and 0 <= a.min() and a.max() <= 1
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(random_rain(clean, rng_a), random_rain(clean, rng_b))


def test_streaks_are_additive_grey_and_follow_density_length_and_brightness():
    clean = np.full((96, 128, 3), 0.3, np.float32)
    layer = RainLayer(density=0.004, length=15, angle=0, blur=0.5, brightness=0.5)
    rainy = add_rain(clean, layer, seed=1)
    added = rainy - clean
    assert added.min() >= 0 and np.allclose(added[..., 0], added[..., 2])  # only brightens, colourless
    assert 0.4 < added.max() <= 0.7
    more = add_rain(clean, RainLayer(density=0.012, length=15, angle=0, blur=0.5, brightness=0.5), seed=1)
    assert (more - clean).mean() > 2 * added.mean()
    # vertical streaks: neighbours along a column agree far more than neighbours along a row
    streaks = rain_streaks((96, 128), layer, np.random.default_rng(0))
    down = np.corrcoef(streaks[:-1].ravel(), streaks[1:].ravel())[0, 1]
    across = np.corrcoef(streaks[:, :-1].ravel(), streaks[:, 1:].ravel())[0, 1]
    assert down > 0.8 and across < down - 0.3
    veiled = add_rain(clean, layer, seed=1, veil=0.3, airlight=0.9)
    assert np.allclose(veiled, 0.7 * rainy + 0.27, atol=1e-6)
    with pytest.raises(ValueError):
        RainLayer(density=2)


def test_heavy_rain_degrades_more_than_light_rain(photos):
    from skimage.metrics import peak_signal_noise_ratio as psnr
    clean = photos["coffee"][::2, ::2]
    light = np.mean([psnr(clean, random_rain(clean, s), data_range=1) for s in range(4)])
    heavy = np.mean([psnr(clean, random_rain(clean, s, heavy=True), data_range=1) for s in range(4)])
    assert heavy < light - 3 and 12 < heavy and light < 30


def test_rainy_sample_has_streaks_over_its_reference():
    from napari_cdd_dehaze._sample_data import rainy_scene
    (clear, _, kind), (rainy, _, _) = rainy_scene()
    assert kind == "image" and rainy.dtype == np.uint8 and rainy.shape == clear.shape
    added = rainy.astype(int) - clear.astype(int)
    assert (added.min(axis=-1) > 40).mean() > 0.01  # bright grey streaks over a good part of the photo
    assert rainy.mean() > clear.mean()


def test_make_rain_set_alternates_photos_scales_them_and_refuses_bsds500(tmp_path, photos):
    import subprocess
    import sys
    from pathlib import Path

    from napari_cdd_dehaze.io.image_files import read_image, write_image

    script = str(Path(__file__).parent.parent / "training" / "make_rain_set.py")
    to_u8 = lambda a: np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    names = sorted(photos)
    write_image(tmp_path / "rainy" / "real.png", to_u8(random_rain(photos[names[0]], seed=1)))
    write_image(tmp_path / "clean" / "other.png", to_u8(photos[names[1]]))
    for name in names[2:]:
        write_image(tmp_path / "photos" / f"{name}.png", to_u8(photos[name]))
    write_image(tmp_path / "photos" / "grey.png", to_u8(photos[names[2]].mean(axis=-1)))
    base = [sys.executable, script, "--rainy", str(tmp_path / "rainy"), "--clean", str(tmp_path / "clean"),
            "--short-side", "200"]
    subprocess.run([*base, "--photos", str(tmp_path / "photos"), "--out", str(tmp_path / "data")], check=True,
                   capture_output=True)
    rainy, clean = (sorted(p.name for p in (tmp_path / "data" / side).iterdir()) for side in ("rainy", "clean"))
    synthetic = [n.removeprefix("synth-photos-") for n in rainy if n.startswith("synth-")]
    others = [n.removeprefix("photos-") for n in clean if n.startswith("photos-")]
    assert "real.png" in rainy and "other.png" in clean and not set(synthetic) & set(others)  # no scene on both sides
    assert len(synthetic) + len(others) == len(names) - 1  # every photo once (the grey one too)
    for path in (tmp_path / "data").rglob("*.png"):
        image = read_image(path)
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) <= 200, path.name
    refused = subprocess.run([*base, "--photos", str(tmp_path / "bsds500"), "--out", str(tmp_path / "no")],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "BSDS500" in refused.stderr
