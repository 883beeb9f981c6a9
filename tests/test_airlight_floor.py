"""airlight_floor: the head's veil, at least He et al.'s airlight (networks.floor_airlight), in training too."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from skimage.transform import resize

from napari_cdd_dehaze.cli import main
from napari_cdd_dehaze.gan.checkpoint import save_restorer
from napari_cdd_dehaze.gan.methods import build_method
from napari_cdd_dehaze.gan.networks import MIN_TRANSMISSION, GeneratorConfig, floor_airlight
from napari_cdd_dehaze.imaging.metrics import psnr
from napari_cdd_dehaze.imaging.primitives import estimate_airlight
from napari_cdd_dehaze.imaging.synthesis import ramp_depth
from napari_cdd_dehaze.io.image_files import write_image
from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array, with_airlight_floor


def _u8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


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


def test_the_engine_composes_with_the_floored_maps_and_the_model_file_keeps_the_window(bright_haze,
                                                                                     check_inference_field):
    """A restorer with airlight_floor dehazes with floor_airlight's maps (conftest's check_inference_field)."""
    check_inference_field("airlight_floor", 3, lambda unit, t, a: floor_airlight(unit, t, a, 3),
                          bright_haze[2][0].numpy().transpose(1, 2, 0))


@pytest.mark.parametrize("fields", [dict(airlight_floor=3, estimate_size=0, pool_airlight=0),
                                    dict(airlight_floor=4), dict(airlight_floor=-1)])
def test_a_floor_needs_a_working_scale_and_an_odd_window(fields):
    base = dict(width=8, blocks=2, output="dehaze", estimate_size=64)
    with pytest.raises(ValueError, match="airlight_floor"):
        GeneratorConfig(**{**base, **fields})
    assert dataclasses.replace(GeneratorConfig(**base), airlight_floor=5).airlight_floor == 5


def test_a_run_turns_the_floor_on_or_off_without_a_new_file(bright_haze, working_scale_dehazer, tmp_path):
    """RestoreOptions.airlight_floor / `--airlight-floor` override the model's own setting for one run (the model
    itself unchanged); a value the field cannot take is refused with its name (by `apply` once, up front)."""
    hazy = bright_haze[2][0].numpy().transpose(1, 2, 0)
    plain, floored = working_scale_dehazer(), working_scale_dehazer(airlight_floor=3)
    on = restore_array(plain, hazy, RestoreOptions(device="cpu", airlight_floor=3))
    assert np.abs(on - restore_array(floored, hazy, RestoreOptions(device="cpu"))).max() < 1e-6
    off = restore_array(floored, hazy, RestoreOptions(device="cpu", airlight_floor=0))
    assert np.abs(off - restore_array(plain, hazy, RestoreOptions(device="cpu"))).max() < 1e-6
    assert np.abs(on - off).max() > 0.01 and plain.config.airlight_floor == 0
    with pytest.raises(ValueError, match="airlight_floor"):
        restore_array(plain, hazy, RestoreOptions(device="cpu", airlight_floor=4))
    for i, crop in enumerate((hazy[:, :64], hazy[:, 64:])):  # a paired folder of two images (clear: the truth)
        write_image(tmp_path / "pairs" / "hazy" / f"{i}.png", _u8(crop))
        write_image(tmp_path / "pairs" / "clear" / f"{i}.png",
                    _u8(bright_haze[0][0].numpy().transpose(1, 2, 0)[:, 64 * i:64 * (i + 1)]))
    model = save_restorer(tmp_path / "plain.safetensors", plain)
    scores = {}
    for floor in ("0", "3"):
        assert main(["eval", "--paired", str(tmp_path / "pairs"), "--method", str(model), "--device", "cpu",
                     "--airlight-floor", floor, "--out", str(tmp_path / floor)]) == 0
        scores[floor] = json.loads((tmp_path / floor / "report.json").read_text())["sets"][0]["means"]
    assert scores["0"] != scores["3"]
    assert main(["eval", "--paired", str(tmp_path / "pairs"), "--method", str(model), "--device", "cpu",
                 "--airlight-floor", "4", "--out", str(tmp_path / "bad")]) == 1
    assert main(["apply", str(tmp_path / "pairs" / "hazy" / "0.png"), str(tmp_path / "pairs" / "hazy" / "1.png"),
                 "--model", str(model), "--airlight-floor", "4", "--out", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()  # refused once, before any image
    assert main(["apply", str(tmp_path / "pairs" / "hazy" / "0.png"), "--model", str(model), "--device", "cpu",
                 "--airlight-floor", "3", "--out", str(tmp_path / "on")]) == 0


def test_in_training_the_restorer_composes_each_crop_with_the_floor_and_learns_through_it(bright_haze):
    """A recipe's airlight_floor reaches the restorer only, and its training pass composes with the floored maps
    of the crop it sees (so t and a learn with the floor); the gradient reaches the head, not He et al.'s
    estimate (a prior of the input)."""
    method = build_method(tiny_config(output="scattering", dark_patch=5, estimate_size=64, pool_airlight=1,
                                      airlight_floor=3))
    restorer = method.restorer.train()
    assert restorer.config.airlight_floor == 3 and method.degrader.config.airlight_floor == 0
    hazy = (bright_haze[2][..., :48, :48] * 2 - 1).requires_grad_(True)
    out, t, a = restorer.forward_with_maps(hazy)
    unit = (hazy.detach() + 1) / 2
    assert float(a.detach().min()) >= float(estimate_airlight(unit, 3).mean()) - 1e-6
    assert torch.allclose(out, ((unit - a) / t + a).clamp(0, 1) * 2 - 1, atol=1e-6)
    _, t0, a0 = with_airlight_floor(restorer, 0).train().forward_with_maps(hazy)
    # this tiny head reads the white veil low: the floor is what composes
    assert float(a0.detach().max()) < float(a.detach().min())
    t_floor, a_floor = floor_airlight(unit, t0, a0, 3)
    assert torch.allclose(t, t_floor, atol=1e-6) and torch.allclose(a, a_floor, atol=1e-6)
    out.mean().backward()
    head_grad = sum(float(p.grad.abs().sum()) for p in restorer.parameters() if p.grad is not None)
    assert head_grad > 0 and torch.isfinite(hazy.grad).all()
