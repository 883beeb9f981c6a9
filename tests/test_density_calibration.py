"""dark_target: the restorer's haze shape, the dark channel prior's haze density (working_scale.calibrate_density)."""
import dataclasses

import numpy as np
import pytest
import torch
from skimage.transform import resize

from napari_cdd_dehaze.metrics import psnr
from napari_cdd_dehaze.networks import GeneratorConfig, dark_channel
from napari_cdd_dehaze.synthesis import add_haze, ramp_depth
from napari_cdd_dehaze.working_scale import (DARK_PATCH, DARK_QUANTILE, DENSITY_SCALES, calibrate_density,
                                            output_dark_quantile)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()


@pytest.fixture(scope="module")
def scene(photos):
    """A 96×128 photo under a veil of known density over a ramp of depth."""
    clear = resize(photos["coffee"], (96, 128), anti_aliasing=True).astype(np.float32)
    depth = ramp_depth((96, 128), near=0.3, far=1.2).astype(np.float32)
    return clear, depth


def _quantile_of(clear: np.ndarray) -> float:
    return float(torch.quantile(dark_channel(_tensor(clear), DARK_PATCH).flatten(), DARK_QUANTILE))


@pytest.mark.parametrize("beta_true, beta_head", [(1.5, 0.75), (1.0, 2.0)])
def test_calibration_recovers_the_density_of_haze_whose_shape_the_head_got_right(scene, beta_true, beta_head):
    """The head's t has the scene's depth but the wrong density (half or twice the true β): matched to the
    clear photo's own dark-channel quantile, s comes out as the ratio of the densities and the output as the
    clear photo, far closer than with the head's t."""
    clear, depth = scene
    airlight = 0.9
    unit = _tensor(add_haze(clear, depth, beta_true, airlight))
    head_t = torch.from_numpy(np.exp(-beta_head * depth))[None, None]
    a = torch.full((1, 1, 1, 1), airlight)
    t, scale = calibrate_density(unit, head_t, a, _quantile_of(clear))
    assert scale.shape == (1,) and float(scale) == pytest.approx(beta_true / beta_head, rel=0.03)
    calibrated = ((unit - a) / t + a).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
    as_head = ((unit - a) / head_t + a).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
    assert psnr(clear, calibrated) > 35 and psnr(clear, calibrated) > psnr(clear, as_head) + 10
    assert float(output_dark_quantile(unit, t, a)) == pytest.approx(_quantile_of(clear), abs=2e-3)


def test_a_dim_scene_under_a_bright_veil_is_darkened_to_the_prior(scene):
    """The failure it was built for: half the light under a veil of 1, the head reading too thin a haze (its
    outputs too bright). With the clear photos' typical quantile as target the output loses that glow."""
    clear, depth = scene
    dim = 0.5 * clear
    unit = _tensor(add_haze(dim, depth, 1.0, 1.0))
    head_t = torch.from_numpy(np.exp(-0.6 * depth))[None, None]  # 60 % of the true density
    a = torch.ones(1, 1, 1, 1)
    t, scale = calibrate_density(unit, head_t, a, 0.045)
    assert float(scale) > 1.2
    out = ((unit - a) / t + a).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
    as_head = ((unit - a) / head_t + a).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
    assert abs(out.mean() - dim.mean()) < 0.5 * abs(as_head.mean() - dim.mean())
    assert psnr(dim, out) > psnr(dim, as_head) + 3


def test_each_image_gets_its_own_scale_and_the_range_bounds_it(scene):
    """In a batch every image has its own s; a clear input (t = 1) is left as it is, and a target no density
    in the range can meet gives the range's end, not a wild factor."""
    clear, depth = scene
    a = torch.full((1, 1, 1, 1), 0.9)
    hazy = _tensor(add_haze(clear, depth, 1.5, 0.9))
    head_t = torch.from_numpy(np.exp(-0.75 * depth))[None, None]
    batch_t, scales = calibrate_density(torch.cat([hazy, _tensor(clear)]), torch.cat([head_t, head_t]), a,
                                        _quantile_of(clear))
    alone_t, alone = calibrate_density(hazy, head_t, a, _quantile_of(clear))
    assert torch.allclose(scales[:1], alone) and torch.allclose(batch_t[:1], alone_t)
    assert float(scales[1]) < float(scales[0])  # the clear one needs less: its quantile is met sooner
    unchanged, _ = calibrate_density(_tensor(clear), torch.ones(1, 1, 96, 128), a, 0.045)
    assert torch.equal(unchanged, torch.ones(1, 1, 96, 128))  # nothing to rescale where the head saw no haze
    _, lowest = calibrate_density(hazy, head_t, a, 0.99)  # every output is darker than that: least density
    _, highest = calibrate_density(hazy, head_t, a, -1.0)  # no output is that dark: most density
    assert float(lowest) == pytest.approx(DENSITY_SCALES[0], rel=1e-4)
    assert float(highest) == pytest.approx(DENSITY_SCALES[1], rel=1e-4)


def test_the_engine_composes_with_the_calibrated_t_and_the_model_file_keeps_the_target(scene, check_inference_field):
    """A restorer with dark_target dehazes with calibrate_density's t (conftest's check_inference_field)."""
    clear, depth = scene
    check_inference_field("dark_target", 0.045, lambda unit, t, a: (calibrate_density(unit, t, a, 0.045)[0], a),
                          add_haze(clear, depth, 1.2, 0.9))


@pytest.mark.parametrize("fields", [dict(dark_target=0.05, estimate_size=0, pool_airlight=0),
                                    dict(dark_target=1.0), dict(dark_target=-0.1)])
def test_a_target_needs_a_working_scale_and_a_value_in_the_unit_range(fields):
    base = dict(width=8, blocks=2, output="dehaze", estimate_size=64)
    with pytest.raises(ValueError, match="dark_target"):
        GeneratorConfig(**{**base, **fields})
    assert dataclasses.replace(GeneratorConfig(**base), dark_target=0.5).dark_target == 0.5
