"""Classical dehazers: the guided filter's known properties, haze removal on synthetic haze, and the restore path."""
import numpy as np
import pytest

from napari_cdd_dehaze.gan.checkpoint import CheckpointError
from napari_cdd_dehaze.imaging.metrics import mean_dark_channel, psnr
from napari_cdd_dehaze.imaging.primitives import box_mean, estimate_airlight, image_guided_filter, to_tensor
from napari_cdd_dehaze.imaging.synthesis import add_haze, ramp_depth
from napari_cdd_dehaze.models import BUILTIN_MODELS, load_model
from napari_cdd_dehaze.restore.classical import (
    CLASSICAL,
    ClassicalDehazer,
    colour_attenuation_prior,
    dark_channel_prior,
)
from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array
from napari_cdd_dehaze.restore.windows import Cancelled

DEHAZERS = [dark_channel_prior, colour_attenuation_prior]


@pytest.fixture(scope="module")
def hazy_pairs(photos):
    """(clear, hazy) at half size: haze thickening towards the top, slightly bluish airlight."""
    pairs = {}
    for name in ("astronaut", "coffee", "motorcycle"):
        clear = photos[name][::2, ::2]
        pairs[name] = clear, add_haze(clear, ramp_depth(clear.shape[:2], near=0.3, far=1.2), beta=1.5,
                                      airlight=(0.82, 0.85, 0.88))
    return pairs


def test_box_mean_is_the_mean_over_the_window_cut_at_the_borders():
    x = np.random.default_rng(0).random((9, 13))
    r = 2
    brute = np.array([[x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean() for j in range(13)]
                      for i in range(9)])
    box = lambda a, radius: box_mean(to_tensor(a), radius)[0, 0].numpy()  # noqa: E731
    assert np.allclose(box(x, r), brute)
    assert np.allclose(box(x, 50), x.mean())  # a window larger than the image covers all of it


def test_guided_filter_keeps_a_constant_and_preserves_an_edge_that_guides_it():
    guided_filter = image_guided_filter
    rng = np.random.default_rng(0)
    guide = rng.random((40, 50)).astype(np.float32)
    assert np.allclose(guided_filter(guide, np.full((40, 50), 0.37, np.float32), radius=5), 0.37, atol=1e-6)

    step = np.zeros((40, 50), np.float32)
    step[:, 25:] = 1.0
    edge_kept = guided_filter(step, step, radius=8, eps=1e-6)  # self-guided, small eps: the input comes back
    assert np.abs(edge_kept - step).max() < 1e-3
    smoothed = guided_filter(step, step, radius=8, eps=100.0)  # huge eps: a ≈ 0, q = mean of b = twice box-blurred
    twice = box_mean(box_mean(to_tensor(step.astype(np.float64)), 8), 8)[0, 0].numpy()
    assert np.allclose(smoothed, twice, atol=0.01) and np.abs(smoothed - step).max() > 0.3


def test_airlight_is_found_in_the_haziest_region(hazy_pairs):
    _, hazy = hazy_pairs["motorcycle"]
    airlight = estimate_airlight(to_tensor(hazy)).flatten().numpy()
    assert np.abs(airlight - [0.82, 0.85, 0.88]).max() < 0.08


@pytest.mark.parametrize("dehaze", DEHAZERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", ["astronaut", "coffee", "motorcycle"])
def test_dehazing_brings_synthetic_haze_closer_to_the_clear_image(hazy_pairs, dehaze, name):
    clear, hazy = hazy_pairs[name]
    restored = dehaze(hazy)
    assert restored.shape == hazy.shape and restored.dtype == np.float32
    assert 0.0 <= restored.min() and restored.max() <= 1.0
    assert psnr(clear, restored) > psnr(clear, hazy) + 2.0
    assert mean_dark_channel(restored) < mean_dark_channel(hazy) - 0.1


@pytest.mark.parametrize("dehaze", DEHAZERS, ids=lambda f: f.__name__)
def test_grey_is_dehazed_as_an_image_with_three_equal_channels(hazy_pairs, dehaze):
    clear, hazy = hazy_pairs["coffee"]
    grey = hazy.mean(axis=-1)
    as_rgb = dehaze(np.repeat(grey[..., None], 3, axis=-1))
    assert np.allclose(dehaze(grey), as_rgb[..., 0], atol=1e-4)
    assert dehaze(grey[..., None]).shape == grey.shape + (1,)
    assert psnr(clear.mean(axis=-1), dehaze(grey)) > psnr(clear.mean(axis=-1), grey)


def test_a_1024_square_image_takes_seconds_not_minutes():
    import time
    image = np.random.default_rng(0).random((1024, 1024, 3), dtype=np.float32)
    for dehaze in DEHAZERS:
        start = time.perf_counter()
        dehaze(image)
        assert time.perf_counter() - start < 10.0  # ~0.6 s each measured on 2 idle cores


# ------------------------------------------------------------------------------ through restore_array
@pytest.fixture(scope="module")
def dcp():
    return CLASSICAL["dcp"]


def _layouts(hazy: np.ndarray) -> dict[str, tuple[np.ndarray, int, float]]:
    """name → (array, number of planes, full-scale value) for every layout restore_array handles."""
    rgb, grey = hazy[:48, :64], hazy[:48, :64].mean(axis=-1)
    alpha = np.linspace(0, 1, 48 * 64).reshape(48, 64, 1)
    u8 = lambda a: np.rint(a * 255).astype(np.uint8)
    u16 = lambda a: np.rint(a * 65535).astype(np.uint16)
    return {"rgb uint8": (u8(rgb), 1, 255), "rgba uint8": (u8(np.concatenate([rgb, alpha], -1)), 1, 255),
            "grey uint16": (u16(grey), 1, 65535), "grey stack uint16": (u16(np.stack([grey, grey[::-1]])), 2, 65535),
            "rgb stack uint8": (u8(np.stack([rgb, rgb[:, ::-1]])), 2, 255), "rgb float32": (rgb, 1, 1.0)}


@pytest.mark.parametrize("layout", ["rgb uint8", "rgba uint8", "grey uint16", "grey stack uint16",
                                    "rgb stack uint8", "rgb float32"])
def test_restore_array_runs_a_classical_dehazer_on_every_layout(hazy_pairs, dcp, layout):
    array, planes, full = _layouts(hazy_pairs["coffee"][1])[layout]
    seen = []
    out = restore_array(dcp, array, RestoreOptions(progress=lambda done, total: seen.append((done, total))))
    assert out.shape == array.shape and out.dtype == array.dtype
    assert seen == [(i + 1, planes) for i in range(planes)]  # one progress report per plane
    if layout.startswith("rgba"):
        assert np.array_equal(out[..., 3], array[..., 3])  # alpha passes through
    colour_in, colour_out = (array[..., :3], out[..., :3]) if layout.startswith("rgba") else (array, out)
    for i in range(planes):  # each plane is the plane dehazed whole, mapped back to the input's scale
        plane_in, plane_out = (colour_in[i], colour_out[i]) if planes > 1 else (colour_in, colour_out)
        expected = dcp(plane_in.astype(np.float32) / full).reshape(plane_out.shape)
        assert np.abs(plane_out.astype(np.float32) / full - expected).max() <= 0.51 / 255 + 1e-6
    assert np.abs(out.astype(np.float32) - array.astype(np.float32)).mean() > 0.02 * full  # it did dehaze


def test_stop_is_honoured_between_planes(dcp, hazy_pairs):
    _, hazy = hazy_pairs["coffee"]
    stack = (np.stack([hazy[:40, :40]] * 4) * 255).astype(np.uint8)
    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) > 2
    with pytest.raises(Cancelled):
        restore_array(dcp, stack, RestoreOptions(should_stop=stop_after_two))
    assert len(calls) == 3  # asked before each plane: two ran, the third was refused


def test_load_model_names_and_errors(tmp_path, monkeypatch):
    assert isinstance(load_model("dcp"), ClassicalDehazer) and load_model("cap").name == "cap"
    image = np.random.default_rng(0).random((20, 20, 3)).astype(np.float32)
    assert np.array_equal(load_model("identity")(image), image)
    assert {"dcp", "cap", "identity", "default"} <= set(BUILTIN_MODELS)
    bundled = load_model("default")
    assert bundled.config.output == "dehaze" and (bundled.config.width, bundled.config.blocks) == (32, 6)
    assert (bundled.config.estimate_size, bundled.config.pool_airlight) == (128, 1)  # its working scale
    assert bundled.config.guided_upsample == 8
    import napari_cdd_dehaze.models as models
    monkeypatch.setitem(models.BUNDLED_WEIGHTS, "default", tmp_path / "absent.safetensors")  # a build without it
    with pytest.raises(CheckpointError, match="no 'default' model is bundled"):
        load_model("default")
    with pytest.raises(CheckpointError, match="not a built-in model"):
        load_model(str(tmp_path / "nope"))
