"""airlight_floor: the head's veil, at least He et al.'s airlight (working_scale.floor_airlight)."""
import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save
from skimage.transform import resize

from napari_cdd_dehaze import working_scale
from napari_cdd_dehaze.checkpoint import load_restorer, read_safetensors, save_restorer
from napari_cdd_dehaze.config import TrainConfig
from napari_cdd_dehaze.metrics import psnr
from napari_cdd_dehaze.networks import MIN_TRANSMISSION, GeneratorConfig, ResnetGenerator, estimate_airlight
from napari_cdd_dehaze.restore import RestoreOptions, restore_array
from napari_cdd_dehaze.synthesis import ramp_depth
from napari_cdd_dehaze.working_scale import floor_airlight


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()


@pytest.fixture(scope="module")
def bright_haze(photos):
    """A 96×128 photo under a white veil (airlight 1) thick enough at the top that some pixels are nearly all
    veil: the clear scene, its true t (1, 1, H, W) and the hazy image (1, 3, H, W), all in [0, 1]."""
    clear = _tensor(resize(photos["coffee"], (96, 128), anti_aliasing=True).astype(np.float32))
    t = torch.from_numpy(np.exp(-1.5 * ramp_depth((96, 128), near=0.2, far=1.5)))[None, None].float()
    return clear, t, clear * t + 1.0 * (1 - t)


def test_the_floor_keeps_the_veil_and_restores_the_contrast_a_low_airlight_took(bright_haze):
    """A head that reads the veil a·(1 − t) right but the airlight low (0.9 under a white veil) leaves the scene
    dim and flat; floored at He et al.'s estimate, the same veil composes the scene back. A head whose airlight
    is already above the estimate is left exactly as it was."""
    clear, t_true, hazy = bright_haze
    low = torch.full((1, 1, 1, 1), 0.9)
    t_head = (1 - 1.0 * (1 - t_true) / low).clamp(MIN_TRANSMISSION, 1)  # the true veil, a low airlight
    t_floor, a_floor = floor_airlight(hazy, t_head, low, 3)
    bright = float(estimate_airlight(hazy, 3).mean())
    assert bright > 0.95 and float(a_floor) == pytest.approx(bright)
    kept = t_head > MIN_TRANSMISSION  # where the head's t was not clamped, its veil is kept exactly
    assert torch.allclose((a_floor * (1 - t_floor))[kept], (low * (1 - t_head))[kept], atol=1e-5)

    def compose(t, a):
        return ((hazy - a) / t + a).clamp(0, 1)[0].numpy().transpose(1, 2, 0)

    truth = clear[0].numpy().transpose(1, 2, 0)
    before, after = psnr(compose(t_head, low), truth), psnr(compose(t_floor, a_floor), truth)
    assert after > before + 5, (before, after)
    high = torch.full((1, 1, 1, 1), 1.0)
    same_t, same_a = floor_airlight(hazy, t_true, high, 3)
    assert torch.equal(same_a, high) and torch.allclose(same_t, t_true.clamp(MIN_TRANSMISSION, 1), atol=1e-6)


def _dehazer(**fields) -> ResnetGenerator:
    torch.manual_seed(0)
    return ResnetGenerator(GeneratorConfig(width=8, blocks=2, output="dehaze", dark_patch=15, estimate_size=64,
                                           pool_airlight=1, **fields)).eval()


def test_the_engine_composes_with_the_floored_maps_and_the_model_file_keeps_the_window(bright_haze, tmp_path):
    """A restorer with airlight_floor dehazes with floor_airlight's maps (images within the working size too),
    carries the window in its file, and old files without the field load with it off."""
    _, _, hazy_t = bright_haze
    hazy = hazy_t[0].numpy().transpose(1, 2, 0)
    g = _dehazer(airlight_floor=3)
    x = hazy_t * 2 - 1
    with torch.no_grad():
        small = working_scale.shrink(lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1], 96, 128, 64, 1 << 24)
        t, a = g.scattering_maps(small, g.decode(small, g.encoder(small)))
        t, a = floor_airlight((small + 1) / 2, t, a, 3)
        full_t = working_scale.upsample_rows(t, 96, 128, 0, 96, 128)
        expected = (((x + 1) / 2 - a) / full_t + a).clamp(0, 1)[0].numpy().transpose(1, 2, 0)
    out = restore_array(g, hazy, RestoreOptions(device="cpu"))
    assert np.abs(out - expected).max() < 1e-4
    plain = _dehazer()
    assert np.abs(restore_array(plain, hazy, RestoreOptions(device="cpu")) - out).max() > 0.01
    within = hazy[:40, :60]  # within the working size: floored as well
    assert np.abs(restore_array(g, within, RestoreOptions(device="cpu"))
                  - restore_array(plain, within, RestoreOptions(device="cpu"))).max() > 0.01
    loaded = load_restorer(save_restorer(tmp_path / "r.safetensors", g))
    assert loaded.config.airlight_floor == 3
    assert np.abs(restore_array(loaded, hazy, RestoreOptions(device="cpu")) - out).max() < 1e-6
    tensors, metadata = read_safetensors(save_restorer(tmp_path / "old.safetensors", g))
    del metadata["airlight_floor"]  # a file written before the field existed
    (tmp_path / "old.safetensors").write_bytes(save(tensors, metadata=metadata))
    assert load_restorer(tmp_path / "old.safetensors").config.airlight_floor == 0
    recipe = TrainConfig(output="scattering", estimate_size=64, airlight_floor=3)
    assert recipe.generator_config().airlight_floor == 3 and recipe.generator_config("degrade").airlight_floor == 0


@pytest.mark.parametrize("fields", [dict(airlight_floor=3, estimate_size=0, pool_airlight=0),
                                    dict(airlight_floor=4), dict(airlight_floor=-1)])
def test_a_floor_needs_a_working_scale_and_an_odd_window(fields):
    base = dict(width=8, blocks=2, output="dehaze", estimate_size=64)
    with pytest.raises(ValueError, match="airlight_floor"):
        GeneratorConfig(**{**base, **fields})
    assert dataclasses.replace(GeneratorConfig(**base), airlight_floor=5).airlight_floor == 5
