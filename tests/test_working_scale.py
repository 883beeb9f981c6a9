"""Dehazing at a working scale: haze estimated on a shrunk copy, output composed at full size, band by band."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.transform import resize

from napari_cdd_dehaze.gan.checkpoint import load_restorer, save_restorer
from napari_cdd_dehaze.gan.config import TrainConfig
from napari_cdd_dehaze.gan.networks import GeneratorConfig, ResnetGenerator
from napari_cdd_dehaze.imaging.primitives import guided_coefficients, luminance
from napari_cdd_dehaze.imaging.synthesis import add_haze
from napari_cdd_dehaze.restore import working_scale
from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array
from napari_cdd_dehaze.restore.windows import Cancelled
from napari_cdd_dehaze.restore.working_scale import (
    GUIDED_UPSAMPLE_EPS,
    haze_at_working_scale,
    shrink,
    upsample_rows,
    working_shape,
)


def _dehazer(**fields) -> ResnetGenerator:
    torch.manual_seed(0)
    g = ResnetGenerator(GeneratorConfig(width=8, blocks=2, output="dehaze", dark_patch=15, **fields)).eval()
    with torch.no_grad():  # a transmission and airlight that vary strongly across the image
        g.head[1].weight.mul_(20)
    return g


@pytest.fixture(scope="module")
def hazy(photos):
    photo = resize(photos["coffee"], (517, 1031), anti_aliasing=True).astype(np.float32)  # odd, not /4
    return (0.6 * photo + 0.4 * np.array([0.85, 0.85, 0.9], dtype=np.float32)).astype(np.float32)


def _reader(x: torch.Tensor):
    return lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1]


@pytest.mark.parametrize("shape", [(8, 5), (64, 48), (33, 200)])
def test_upsampled_bands_equal_one_bilinear_resize(shape):
    maps = torch.rand(1, 2, *shape)
    full = F.interpolate(maps, size=(517, 1031), mode="bilinear", align_corners=False)
    bands = torch.cat([upsample_rows(maps, 517, 1031, y, min(y + 70, 517), 1031) for y in range(0, 517, 70)], 2)
    assert torch.allclose(bands, full, atol=1e-4)  # float32 rounding of the positions in torch
    beyond = upsample_rows(maps, 517, 1031, 510, 530, 1040)  # padding rows and columns repeat the edge
    assert torch.allclose(beyond[..., :7, :1031], full[..., 510:, :], atol=1e-4)
    assert torch.allclose(beyond[..., 7:, :1031], full[..., -1:, :].expand(-1, -1, 13, -1), atol=1e-4)
    assert torch.allclose(beyond[..., 1031:], beyond[..., 1030:1031].expand(-1, -1, -1, 9))


def test_the_shrunk_copy_keeps_the_aspect_and_averages_the_image():
    x = torch.rand(1, 3, 1000, 400) * 2 - 1
    small = shrink(_reader(x), 1000, 400, 128, band_elements=3 * 400 * 37)  # bands of 35 rows (factor 7)
    assert tuple(small.shape) == (1, 3, *working_shape(1000, 400, 128)) == (1, 3, 128, 52)
    reference = F.interpolate(F.avg_pool2d(x[..., :994, :399], 7), size=(128, 52), mode="bilinear",
                              antialias=True, align_corners=False)
    assert torch.allclose(small, reference, atol=1e-5)
    assert working_shape(4000, 30, 128) == (128, 16)  # never thinner than the encoder can take


def test_a_large_image_is_composed_from_maps_of_its_shrunk_copy(hazy):
    g = _dehazer()
    out = restore_array(g, hazy, RestoreOptions(device="cpu", estimate_size=128))
    x = torch.from_numpy(np.pad(hazy, ((0, 3), (0, 1), (0, 0)), mode="reflect").transpose(2, 0, 1))[None] * 2 - 1
    with torch.no_grad():  # the reference: whole-image operations, no bands
        small = F.interpolate(F.avg_pool2d(x, 8), size=working_shape(520, 1032, 128), mode="bilinear",
                              antialias=True, align_corners=False)
        t, a = g.scattering_maps(small, g.decode(small, g.encoder(small)))
        t, a = (F.interpolate(m, size=(520, 1032), mode="bilinear", align_corners=False) for m in (t, a))
        unit = (x + 1) / 2
        expected = ((unit - a) / t + a).clamp(0, 1)[0, :, :517, :1031].numpy().transpose(1, 2, 0)
    assert out.shape == hazy.shape and out.dtype == np.float32
    assert np.abs(out - expected).max() < 1e-4
    assert np.abs(out - restore_array(g, hazy, RestoreOptions(device="cpu", tile=0, estimate_size=0))).max() > 0.05
    banded = restore_array(g, hazy, RestoreOptions(device="cpu", estimate_size=128, stream_band_elements=3 * 1032 * 50))
    assert np.abs(banded - out).max() < 1e-5  # bands of 50 rows: the same image


def test_images_within_the_working_size_run_as_before(hazy):
    g = _dehazer()
    small = hazy[:200, :300]
    full = restore_array(g, small, RestoreOptions(device="cpu", estimate_size=0))
    assert np.array_equal(restore_array(g, small, RestoreOptions(device="cpu", estimate_size=300)), full)


def test_the_model_carries_its_working_size_and_options_override_it(hazy, tmp_path):
    g = load_restorer(save_restorer(tmp_path / "r.safetensors", _dehazer(estimate_size=128)))
    assert g.config.estimate_size == 128
    own = restore_array(g, hazy, RestoreOptions(device="cpu"))
    assert np.array_equal(own, restore_array(g, hazy, RestoreOptions(device="cpu", estimate_size=128)))
    full = restore_array(g, hazy, RestoreOptions(device="cpu", estimate_size=0))
    assert np.abs(own - full).max() > 0.05



def test_progress_and_stop_count_bands(hazy):
    g, seen = _dehazer(), []
    restore_array(g, hazy, RestoreOptions(device="cpu", estimate_size=128, stream_band_elements=3 * 1032 * 100,
                                          progress=lambda done, total: seen.append((done, total))))
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == list(range(1, 7))
    with pytest.raises(Cancelled):
        restore_array(g, hazy, RestoreOptions(device="cpu", estimate_size=128, should_stop=lambda: True))


def test_a_working_size_is_refused_where_it_has_no_meaning(hazy):
    image_model = ResnetGenerator(GeneratorConfig(width=8, blocks=2)).eval()
    with pytest.raises(ValueError, match="dehazing models"):
        restore_array(image_model, hazy, RestoreOptions(device="cpu", estimate_size=128))
    with pytest.raises(ValueError, match="at least 64"):
        restore_array(_dehazer(), hazy, RestoreOptions(device="cpu", estimate_size=20))
    with pytest.raises(ValueError, match="estimate_size"):
        GeneratorConfig(output="derain", estimate_size=128)


def test_a_pooled_airlight_is_one_grey_value_per_image_at_any_size(hazy):
    """With pool_airlight the output is (I − ā)/t + ā with ā the mean of the head's map over the shrunk copy;
    an image within the working size gets it too, at its own size."""
    pooled, plain = _dehazer(estimate_size=128, pool_airlight=1), _dehazer(estimate_size=128)
    for image in (hazy, hazy[:100, :120]):
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None] * 2 - 1
        H, W = -(-image.shape[0] // 4) * 4, -(-image.shape[1] // 4) * 4
        x = F.pad(x, (0, W - image.shape[1], 0, H - image.shape[0]), mode="reflect")
        with torch.no_grad():
            small = shrink(_reader(x), H, W, 128, 1 << 24)
            t, a = pooled.scattering_maps(small, pooled.decode(small, pooled.encoder(small)))
            f = max(1, max(H, W) // 128)
            t = upsample_rows(t, H // f * f, W // f * f, 0, H, W)
            mean = a.mean()
            expected = ((x + 1) / 2 - mean) / t + mean
        expected = expected.clamp(0, 1)[0, :, :image.shape[0], :image.shape[1]].numpy().transpose(1, 2, 0)
        out = restore_array(pooled, image, RestoreOptions(device="cpu"))
        assert np.abs(out - expected).max() < 1e-4
        assert np.abs(out - restore_array(plain, image, RestoreOptions(device="cpu"))).max() > 0.02
    with pytest.raises(ValueError, match="pool_airlight"):
        GeneratorConfig(output="dehaze", pool_airlight=1)  # nothing to pool without a working scale


def test_the_haze_read_at_the_working_scale_is_what_the_output_is_composed_with(hazy):
    """haze_at_working_scale gives the engine's own t and airlight: recomposed, they give restore_array's output."""
    g = _dehazer(estimate_size=128, pool_airlight=1)
    crop = hazy[:512, :1024]  # a multiple of 4: the engine pads nothing
    x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None] * 2 - 1
    t, a = haze_at_working_scale(g, x)
    assert t.shape[-2:] == working_shape(512, 1024, 128) and a.shape == (1, 1, 1, 1)
    f = max(1, 1024 // 128)
    full_t = upsample_rows(t, 512 // f * f, 1024 // f * f, 0, 512, 1024)
    expected = (((x + 1) / 2 - a) / full_t + a).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
    assert np.abs(restore_array(g, crop, RestoreOptions(device="cpu")) - expected).max() < 1e-4
    small_t, small_a = haze_at_working_scale(g, x[..., :50, :90])  # within the working size: run whole, padded
    assert small_t.shape[-2:] == (52, 92) and small_a.shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="working size"):
        haze_at_working_scale(_dehazer(), x)


def test_bf16_autocast_estimates_the_maps_close_to_fp32(hazy):
    """The shrunk copy runs under the run's autocast; the maps and the composition stay in float32."""
    g = _dehazer(estimate_size=128, pool_airlight=1)
    fp32 = restore_array(g, hazy, RestoreOptions(device="cpu"))
    bf16 = restore_array(g, hazy, RestoreOptions(device="cpu", precision="bf16"))
    assert bf16.dtype == np.float32 and 0 < np.abs(bf16 - fp32).mean() < 0.02


def test_a_pooled_airlight_is_one_value_per_crop_in_training_too():
    """A run with pool_airlight trains the restorer it ships: every forward (a training crop too) composes with
    the mean of the head's airlight map, and the gradient reaches that map through the mean."""
    config = TrainConfig(width=8, blocks=2, nce_layers=(0, 4), output="scattering", dark_patch=15,
                         estimate_size=128, pool_airlight=1)
    restorer = ResnetGenerator(config.generator_config("restore"))
    assert config.generator_config("degrade").pool_airlight == 0  # the degrader keeps its map
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    decoded = restorer.decode(x, restorer.encoder(x))
    t, a = restorer.scattering_maps(x, decoded)
    assert a.shape == (2, 1, 1, 1)
    expected = (((x + 1) / 2 - a) / t + a).clamp(0, 1) * 2 - 1
    assert torch.allclose(restorer(x), expected, atol=1e-6)
    restorer(x).mean().backward()
    assert restorer.head[1].weight.grad[1].abs().sum() > 0  # the airlight channel of the head learns


def test_a_guided_upsampling_applies_coefficients_fitted_at_the_working_scale_to_the_full_size_grey(hazy, tmp_path):
    """With guided_upsample the full-size t is slope·grey + offset, the guided filter's coefficients fitted on the
    shrunk copy and resized bilinearly; the same in bands, carried by the model file, and not the bilinear t."""
    g = _dehazer(estimate_size=128, pool_airlight=1, guided_upsample=4)
    crop = hazy[:512, :1024]  # a multiple of 4: the engine pads nothing
    x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None] * 2 - 1
    with torch.no_grad():
        small = shrink(_reader(x), 512, 1024, 128, 1 << 24)
        t, a = g.scattering_maps(small, g.decode(small, g.encoder(small)))
        coefficients = torch.cat(guided_coefficients(luminance((small + 1) / 2), t, 4, GUIDED_UPSAMPLE_EPS), 1)
        slope, offset = upsample_rows(coefficients, 512, 1024, 0, 512, 1024).split(1, dim=1)
        unit = (x + 1) / 2
        full_t = (slope * luminance(unit) + offset).clamp(0.1, 1)
        expected = ((unit - a) / full_t + a).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
    out = restore_array(g, crop, RestoreOptions(device="cpu"))
    assert np.abs(out - expected).max() < 1e-4
    banded = restore_array(g, crop, RestoreOptions(device="cpu", stream_band_elements=3 * 1024 * 50))
    assert np.abs(banded - out).max() < 1e-5
    loaded = load_restorer(save_restorer(tmp_path / "r.safetensors", g))
    assert loaded.config.guided_upsample == 4
    assert np.abs(restore_array(loaded, crop, RestoreOptions(device="cpu")) - out).max() < 1e-6
    bilinear = _dehazer(estimate_size=128, pool_airlight=1)
    assert np.abs(restore_array(bilinear, crop, RestoreOptions(device="cpu")) - out).max() > 0.02
    within = hazy[:100, :120]  # an image within the working size gets the guided t too, pooled or not
    guided, plain = (_dehazer(estimate_size=128, guided_upsample=r) for r in (4, 0))
    assert np.abs(restore_array(guided, within, RestoreOptions(device="cpu"))
                  - restore_array(plain, within, RestoreOptions(device="cpu"))).max() > 0.01
    with pytest.raises(ValueError, match="guided_upsample"):
        GeneratorConfig(output="dehaze", guided_upsample=4)  # nothing to upsample without a working scale


def test_a_guided_upsampling_restores_a_depth_edge_that_the_bilinear_one_smears(photos, monkeypatch):
    """A perfect estimator at the working scale (the true t, shrunk) and a scene whose depth jumps at an
    object's outline: resized bilinearly, the coarse t leaves a halo of haze or over-dehazing about one
    working-scale pixel wide along the outline; carried along the hazy image's own edges (radius 1) it does not.
    (With this perfect t a wide radius costs more inside the objects than it gains at the outline, texture
    entering the local fits; with a learned t, whose errors are texture of its own, radius 8 scored best on
    the validation suites.)"""
    clear = resize(photos["coffee"], (400, 600), anti_aliasing=True).astype(np.float32)
    rows, cols = np.mgrid[:400, :600]
    near = (rows - 230) ** 2 / 150 ** 2 + (cols - 290) ** 2 / 210 ** 2 < 1  # an ellipse in front, far behind
    depth = np.where(near, 0.15, 1.0).astype(np.float32)
    airlight = 0.9
    hazy = add_haze(clear, depth, 1.6, (airlight,) * 3).astype(np.float32)
    true_t = torch.from_numpy(np.exp(-1.6 * depth))[None, None]

    def perfect_estimate(generator, small, autocast_dtype):  # the true maps at the working scale
        shape = small.shape[-2:]
        return F.interpolate(true_t, size=shape, mode="area"), torch.full((1, 1, 1, 1), airlight)

    monkeypatch.setattr(working_scale, "_scattering_maps", perfect_estimate)
    errors = {}
    for radius in (0, 1):
        g = _dehazer(estimate_size=128, pool_airlight=1, guided_upsample=radius)
        out = restore_array(g, hazy, RestoreOptions(device="cpu"))
        mask = torch.from_numpy(near[None].astype(np.float32))
        edge = (F.max_pool2d(mask, 9, 1, 4) + F.max_pool2d(-mask, 9, 1, 4))[0].numpy() > 0  # 8 pixels wide
        errors[radius] = float(np.abs(out - clear)[edge].mean()), float(np.abs(out - clear).mean())
    (edge_bilinear, all_bilinear), (edge_guided, all_guided) = errors[0], errors[1]
    assert edge_guided < 0.6 * edge_bilinear  # along the outline (0.112 → 0.049 when written)
    assert all_guided < all_bilinear  # and over the whole image
