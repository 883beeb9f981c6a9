"""The bundled model: its figures on the demo scene, its outputs on every path, and the provenance it carries.

The reference outputs in ``tests/data`` were written by the bundled model on a crop of the demo scene; a
change to the engine, the networks or the weights that moves any pixel shows here. CPUs round float32
differently, so one level of 255 is allowed, on few pixels.
"""
import json

import numpy as np
import pytest
from safetensors import safe_open

from napari_cdd_dehaze import RestoreOptions, load_model, restore_array
from napari_cdd_dehaze.demo import run_demo
from napari_cdd_dehaze.gan.checkpoint import DEFAULT_WEIGHTS
from napari_cdd_dehaze.io.image_files import read_image

DATA = __import__("pathlib").Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def model():
    return load_model("default")


def test_the_demo_figures_are_those_the_readme_shows():
    _, _, results = run_demo(log=lambda line: None)
    scores = {r.label: (r.psnr, r.ssim) for r in results}
    assert scores["default model (CDD-GAN)"][0] == pytest.approx(19.36, abs=0.05)
    assert scores["default model (CDD-GAN)"][1] == pytest.approx(0.903, abs=0.002)
    assert scores["dark channel prior"][0] == pytest.approx(17.81, abs=0.05)
    assert scores["colour atten. prior"][0] == pytest.approx(14.25, abs=0.05)


def _close(found: np.ndarray, expected: np.ndarray) -> None:
    difference = np.abs(found.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01, (difference.max(), (difference > 0).mean())


@pytest.mark.parametrize("options", [
    RestoreOptions(device="cpu", precision="fp32"),  # the references are fp32 ("auto" is bf16 on CPUs that have it)
    RestoreOptions(device="cpu", precision="fp32", tile=64),  # the working scale runs whatever the tile size
    RestoreOptions(device="cpu", precision="fp32", stream_band_elements=1 << 14),  # ... and in narrow bands alike
], ids=["working scale", "tile given", "narrow bands"])
def test_the_bundled_model_gives_its_reference_output_at_its_working_scale(model, options):
    hazy = read_image(DATA / "hazy_crop.png")
    _close(restore_array(model, hazy, options), read_image(DATA / "default_working_scale.png"))


@pytest.mark.parametrize("options", [
    RestoreOptions(device="cpu", estimate_size=0, tile=0),
    RestoreOptions(device="cpu", estimate_size=0, whole_max_pixels=4000, stream_band_elements=1 << 16),
    RestoreOptions(device="cpu", estimate_size=0, whole_max_pixels=4000, stream_memory_bytes=0),
    RestoreOptions(device="cpu", estimate_size=0, tile=64),
], ids=["whole", "streamed in RAM", "streamed through files", "tiles"])
def test_the_bundled_model_gives_its_reference_output_at_full_resolution_on_every_path(model, options):
    """At full resolution every window of a pass composes with the whole image's pooled and floored airlight."""
    hazy = read_image(DATA / "hazy_crop.png")
    _close(restore_array(model, hazy, options), read_image(DATA / "default_full_resolution.png"))


def test_the_weights_carry_their_provenance():
    with safe_open(DEFAULT_WEIGHTS, "pt") as f:
        metadata = f.metadata()
    info = json.loads(metadata["info"])
    assert info["method"] == "cdd-gan" and info["step"] == 2600 and info["commit"] and info["trained"]
    assert "training/configs/default.yaml" in info["recipe"]
    assert not {"refine", "airlight", "dark_target"} & set(metadata)  # no retired fields


def test_auto_precision_takes_bf16_only_where_it_is_native_and_within_2_of_255(model, monkeypatch):
    """bf16 (forced here, emulated on a CPU without it) moves the bundled model's output at its working scale by
    at most 1/255; "auto" takes it only where the device computes bf16 natively and only at a working scale."""
    import torch

    from napari_cdd_dehaze.restore import engine

    hazy = read_image(DATA / "hazy_crop.png")
    fp32 = restore_array(model, hazy, RestoreOptions(device="cpu", precision="fp32"))
    bf16 = restore_array(model, hazy, RestoreOptions(device="cpu", precision="bf16"))
    assert np.abs(bf16.astype(int) - fp32).max() <= 2
    cpu = torch.device("cpu")
    monkeypatch.setattr(engine, "native_bf16", lambda device: True)
    assert engine.resolve_precision("auto", model, cpu, 128) == "bf16"
    assert engine.resolve_precision("auto", model, cpu, 0) == "fp32"  # full resolution: up to 3.6/255 off
    assert engine.resolve_precision("fp32", model, cpu, 128) == "fp32"
    monkeypatch.setattr(engine, "native_bf16", lambda device: False)
    assert engine.resolve_precision("auto", model, cpu, 128) == "fp32"
    assert np.array_equal(restore_array(model, hazy, RestoreOptions(device="cpu")), fp32)  # auto here: fp32


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch):
    import torch

    from napari_cdd_dehaze.imaging import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert not devices.native_bf16(torch.device("cpu"))
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert devices.native_bf16(torch.device("cpu"))
    assert not devices.native_bf16(torch.device("meta"))
